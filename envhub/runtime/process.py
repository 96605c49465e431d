"""The ``process`` runtime: the environment's server in a child process, on a Unix socket.

The child is ``python -m envhub.runtime.server FOLDER`` with this interpreter, bounds every step by
``step_timeout_s``, and exits when this process is gone. A crash of the child ends the episodes it
held with :class:`~envhub.errors.RuntimeDiedError`; the next ``reset`` of those environments starts
a new child. What confines it (the README's runtimes table says the same):

- memory: once the server answers its health check, its address space is capped (RLIMIT_AS, set
  from here with ``prlimit``) at what it maps then plus ``[limits] memory_mb`` and
  :data:`SERVER_HEADROOM_MB` for the server's own growth, so private, shared and file mappings all
  count; an allocation past it fails inside the server (``MemoryError``/``OSError``, that
  episode's environment failure) and the server keeps serving. The child also caps its own data
  memory (RLIMIT_DATA). glibc keeps two malloc arenas (``MALLOC_ARENA_MAX=2``), so little address
  space is reserved but unused.
- processes, CPU and all memory charged to it (page cache, ``/dev/shm``, its children): a cgroup of
  its own with ``[limits] pids``, ``cpus`` and memory, where this process may create one
  (:mod:`envhub.runtime.cgroups`: root, or a delegated cgroup v2 subtree). Elsewhere these are not
  enforced (RLIMIT_NPROC counts every process of the user, so it cannot stand in for ``pids``).
- not isolated at all: it runs as this user, with this user's files, environment variables
  (tokens included), network and sockets. Run code you do not trust with ``runtime="docker"``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from envhub.identity.manifest import Manifest
from envhub.runtime.cgroups import Cgroup
from envhub.runtime.pool import ManagedServer

log = logging.getLogger("envhub.runtime.process")

#: Variables that keep numeric libraries from starting a thread per core in every child.
QUIET_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: Address space and memory the server itself may still need once it serves: 64 sessions x 20
#: episodes of arithmetic grew its mappings by 3 MiB, so this is ample.
SERVER_HEADROOM_MB = 64


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        extra = " (killed: out of memory, or stopped from outside)" if -code == signal.SIGKILL else ""
        return f"the server process was killed by {name}{extra}"
    return f"the server process exited with code {code}"


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("; last output: " + " | ".join(text)) if text else ""


class ProcessServer(ManagedServer):
    """``python -m envhub.runtime.server`` in a child process."""

    def __init__(self, folder: Path, manifest: Manifest, digest: str, *, threads: int = 16) -> None:
        super().__init__()
        self.env_ref = manifest.ref
        self.dir = Path(tempfile.mkdtemp(prefix="envhub-proc-"))
        self.uds = str(self.dir / "env.sock")
        self.log_path = self.dir / "server.log"
        cmd = [
            sys.executable, "-m", "envhub.runtime.server", str(folder),
            "--uds", self.uds,
            "--digest", digest,
            "--memory-mb", str(manifest.limits.memory_mb),
            "--threads", str(threads),
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2", **QUIET_THREADS}
        self.memory_mb = manifest.limits.memory_mb
        self.cgroup = Cgroup.create(pids=manifest.limits.pids, cpus=manifest.limits.cpus)
        join = _CgroupJoin.open(self.cgroup) if self.cgroup is not None else None
        if join is None:
            self._remove_cgroup()
        #: The limits actually in force (``address_space_bytes`` once the server is healthy).
        self.enforced: dict[str, object] = dict(self.cgroup.enforced) if self.cgroup else {}
        try:
            with open(self.log_path, "wb") as out:
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True, preexec_fn=join,
                )  # fmt: skip
        except BaseException:
            self._remove_cgroup()
            raise
        finally:
            if join is not None:
                join.close()
        self._reason: str | None = None

    def wait_healthy(self, timeout_s: float) -> None:
        super().wait_healthy(timeout_s)
        self._cap_memory()

    def _cap_memory(self) -> None:
        """Cap the serving child's address space (and its cgroup's memory) at its use now plus its budget."""
        budget = (self.memory_mb + SERVER_HEADROOM_MB) * 1024 * 1024
        mapped = _status_bytes(self.proc.pid, "VmSize")
        if mapped is not None and hasattr(resource, "prlimit"):
            limit = mapped + budget
            try:
                resource.prlimit(self.proc.pid, resource.RLIMIT_AS, (limit, limit))
                self.enforced["address_space_bytes"] = limit
            except OSError as exc:  # another user's process, or a platform without it
                log.warning("%s: address space not capped: %s", self.env_ref, exc)
        if self.cgroup is not None:
            charged = self.cgroup.memory_charged()
            if charged is not None:
                self.cgroup.limit_memory(charged + budget)
                self.enforced.update(self.cgroup.enforced)

    def _remove_cgroup(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None

    def exit_reason(self) -> str | None:
        if self._reason is None:
            code = self.proc.poll()
            if code is not None:
                self._reason = describe_exit(code) + log_tail(self.log_path)
        return self._reason

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3.0)
        self._remove_cgroup()  # and whatever the environment started in it
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<ProcessServer {self.env_ref} pid={self.proc.pid} sessions={self.sessions}>"


def _status_bytes(pid: int, field: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` in bytes; None where there is no such file."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class _CgroupJoin:
    """The ``preexec_fn`` that moves the forked child into its cgroup before it executes anything.

    The ``cgroup.procs`` files are opened before the fork, so that the child only writes to them:
    no allocation, no lock, nothing unsafe between fork and exec.
    """

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds

    @classmethod
    def open(cls, cgroup: Cgroup) -> _CgroupJoin | None:
        fds: list[int] = []
        try:
            for path in cgroup.procs_files():
                fds.append(os.open(path, os.O_WRONLY))
        except OSError as exc:
            log.warning("cannot join the cgroup %s: %s", cgroup.dirs, exc)
            cls(fds).close()
            return None
        return cls(fds)

    def __call__(self) -> None:
        for fd in self.fds:
            os.write(fd, b"0")  # 0: the writing process itself

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
