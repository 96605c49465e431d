"""A control group for one ``process``-runtime server: its process count, CPU share and memory.

Where this process may create cgroups below its own (root, or a delegated subtree), a server gets
one: cgroup v2 when the unified hierarchy has the controllers, else the v1 hierarchies of
``pids``, ``cpu`` and ``memory``. ``pids`` caps every process and thread the server and whatever
it starts hold (``[limits] pids``), ``cpu`` its quota (``[limits] cpus`` per 100 ms), and
``memory`` all memory charged to the group, page cache and shared memory included. Where none is
writable (an unprivileged user without delegation, macOS) the server runs without one, and only
the rlimits of :mod:`envhub.runtime.process` apply; :attr:`Cgroup.enforced` says which limits are.

The child joins the group before it executes anything (it writes ``0`` into each ``cgroup.procs``
between fork and exec), and the group is emptied (every process in it killed) and removed when
the server stops.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from pathlib import Path

#: The v1 controller of each limit, and its files.
V1_CONTROLLERS = ("pids", "cpu", "memory")
CPU_PERIOD_US = 100_000
PREFIX = "envhub-proc-"
_counter = itertools.count()


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root inside the hierarchy, fs type, super options) of every cgroup mount."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                found.append((fields[4], fields[3], tail[0], set(tail[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under ``""`` in the v2 hierarchy."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _below(mount: str, root: str, path: str) -> Path:
    rel = path[len(root):] if path.startswith(root) else path
    return Path(mount) / rel.lstrip("/")


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


def _sweep(parent: Path) -> None:
    """Remove groups left by an envhub process that died (empty ones only: rmdir refuses others)."""
    with contextlib.suppress(OSError):
        for child in parent.glob(f"{PREFIX}*"):
            owner = child.name.removeprefix(PREFIX).split("-")[0]
            if owner.isdigit() and int(owner) != os.getpid() and not Path(f"/proc/{owner}").exists():
                with contextlib.suppress(OSError):
                    child.rmdir()


class Cgroup:
    """One group (a directory per v1 hierarchy, or one v2 directory) for one server."""

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs  # controller -> directory; v2 has one directory under every controller
        self.enforced: dict[str, object] = {}

    @classmethod
    def create(cls, *, pids: int, cpus: float) -> Cgroup | None:
        """A new group capping ``pids`` and ``cpus``, or None where this process may not make one."""
        name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        group = cls._create_v2(name) or cls._create_v1(name)
        if group is None:
            return None
        group._limit_pids_and_cpu(pids, cpus)
        if not group.enforced:
            group.remove()
            return None
        return group

    @classmethod
    def _create_v2(cls, name: str) -> Cgroup | None:
        own = _own_paths().get("")
        mount = next(((m, r) for m, r, kind, _ in _mounts() if kind == "cgroup2"), None)
        if own is None or mount is None:
            return None
        parent = _below(mount[0], mount[1], own)
        try:
            available = set((parent / "cgroup.controllers").read_text().split())
        except OSError:
            return None
        wanted = [c for c in V1_CONTROLLERS if c in available]
        if not wanted:
            return None
        # A non-root group with processes of its own cannot enable controllers for its children
        # (the kernel answers EBUSY): then v2 is not usable from here.
        try:
            enabled = set((parent / "cgroup.subtree_control").read_text().split())
        except OSError:
            return None
        missing = [c for c in wanted if c not in enabled]
        if missing and not _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing)):
            return None
        _sweep(parent)
        path = parent / name
        try:
            path.mkdir()
        except OSError:
            return None
        return cls(2, {c: path for c in wanted})

    @classmethod
    def _create_v1(cls, name: str) -> Cgroup | None:
        own = _own_paths()
        dirs: dict[str, Path] = {}
        for mount, root, kind, options in _mounts():
            for controller in V1_CONTROLLERS:
                if kind != "cgroup" or controller not in options or controller in dirs or controller not in own:
                    continue
                parent = _below(mount, root, own[controller])
                _sweep(parent)
                with contextlib.suppress(OSError):
                    (parent / name).mkdir()
                    dirs[controller] = parent / name
        return cls(1, dirs) if dirs else None

    def _limit_pids_and_cpu(self, pids: int, cpus: float) -> None:
        if "pids" in self.dirs and _write(self.dirs["pids"] / "pids.max", str(pids)):
            self.enforced["pids"] = pids
        if "cpu" in self.dirs:
            quota = max(1000, int(cpus * CPU_PERIOD_US))
            if self.version == 2:
                done = _write(self.dirs["cpu"] / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                done = _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US)) and _write(
                    self.dirs["cpu"] / "cpu.cfs_quota_us", str(quota)
                )
            if done:
                self.enforced["cpus"] = cpus

    def limit_memory(self, limit_bytes: int) -> None:
        """Cap the memory charged to the group, without swap; a group past it is OOM-killed."""
        if "memory" not in self.dirs:
            return
        folder = self.dirs["memory"]
        if self.version == 2:
            done = _write(folder / "memory.max", str(limit_bytes))
            _write(folder / "memory.swap.max", "0")
        else:
            done = _write(folder / "memory.limit_in_bytes", str(limit_bytes))
            if (folder / "memory.memsw.limit_in_bytes").exists():  # only where swap accounting is on
                _write(folder / "memory.memsw.limit_in_bytes", str(limit_bytes))
        if done:
            self.enforced["memory_bytes"] = limit_bytes

    def memory_charged(self) -> int | None:
        """The memory charged to the group now, in bytes; None without a memory controller."""
        if "memory" not in self.dirs:
            return None
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        try:
            return int((self.dirs["memory"] / name).read_text())
        except (OSError, ValueError):
            return None

    def procs_files(self) -> list[Path]:
        """The ``cgroup.procs`` files a process writes ``0`` into to join the group."""
        return sorted({folder / "cgroup.procs" for folder in self.dirs.values()})

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files():
            with contextlib.suppress(OSError, ValueError):
                found |= {int(line) for line in path.read_text().split()}
        return found

    def remove(self) -> None:
        """Kill whatever is still in the group, then remove it."""
        deadline = time.monotonic() + 3.0
        for folder in set(self.dirs.values()):
            while True:
                for pid in self.pids():
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # still busy: its processes are exiting
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
