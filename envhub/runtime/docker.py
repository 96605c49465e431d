"""The ``docker`` runtime: the environment's server in a locked-down container.

Each container runs the image that ``envhub build`` makes (built on first use when missing) with no
network, a read-only root filesystem (a small tmpfs at ``/tmp``), a non-root user, every capability
dropped, ``no-new-privileges``, and the memory, CPU and process limits of the manifest's
``[limits]``. The server listens on a Unix socket in a host temporary folder mounted at
``/run/envhub``. Containers are health-checked before use, pooled (warm ones kept ready), and
removed when their pool lets them go, at the latest when this interpreter exits. Containers left by a
process that died are removed the next time a pool starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envhub.runtime.images import (
    CONTAINER_USER,
    LABEL,
    SOCKET_DIR,
    build_image,
    docker_client,
    record_image,
)
from envhub.errors import RuntimeDiedError
from envhub.runtime.locate import Located
from envhub.identity.manifest import Limits, Manifest
from envhub.runtime.pool import ManagedServer

log = logging.getLogger("envhub.runtime.remote")

OWNER_LABEL = f"{LABEL}.owner-pid"
_swept = False
_sweep_lock = threading.Lock()


def container_options(manifest: Manifest) -> dict[str, Any]:
    """The isolation every envhub container gets (``containers.run`` keyword arguments)."""
    return isolation_options(manifest.limits)


def isolation_options(limits: Limits) -> dict[str, Any]:
    """:func:`container_options` for ``limits`` (also used for imported OpenEnv images)."""
    memory = f"{limits.memory_mb}m"
    return {
        "network_mode": "none",
        "read_only": True,
        "user": CONTAINER_USER,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": memory,
        "memswap_limit": memory,  # no swap: past the limit the kernel's OOM killer stops the server
        "nano_cpus": int(limits.cpus * 1e9),
        "pids_limit": limits.pids,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"},
        "ipc_mode": "private",
    }


def sweep_orphans(client: Any) -> int:
    """Remove envhub containers whose owning process on this machine is gone; returns how many."""
    removed = 0
    for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}):
        try:
            pid = int(container.labels.get(OWNER_LABEL, "0"))
        except ValueError:
            continue
        if pid and not _pid_alive(pid):
            with contextlib.suppress(Exception):
                container.remove(force=True)
                removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ContainerServer(ManagedServer):
    """One container running ``python -m envhub.runtime.server /env`` on a Unix socket."""

    def __init__(self, client: Any, image: str, manifest: Manifest) -> None:
        super().__init__()
        self.env_ref = manifest.ref
        self.client = client
        self.dir = Path(tempfile.mkdtemp(prefix="envhub-ctr-"))
        self.dir.chmod(0o777)  # the container's non-root user creates the socket here
        self.uds = str(self.dir / "env.sock")
        self._reason: str | None = None
        labels = {OWNER_LABEL: str(os.getpid()), f"{LABEL}.ref": manifest.ref}
        try:
            self.container = client.containers.run(
                image,
                detach=True,
                labels=labels,
                volumes={str(self.dir): {"bind": SOCKET_DIR, "mode": "rw"}},
                **container_options(manifest),
            )
        except Exception as exc:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeDiedError(manifest.ref, f"the container could not start: {exc}") from None

    def exit_reason(self) -> str | None:
        if self._reason is not None:
            return self._reason
        try:
            self.container.reload()
        except Exception as exc:  # removed from outside, or the engine went away
            self._reason = f"the container is gone ({type(exc).__name__})"
            return self._reason
        state = self.container.attrs.get("State", {})
        if state.get("Running"):
            return None
        code = state.get("ExitCode")
        if state.get("OOMKilled"):
            why = f"the container ran out of memory (OOMKilled, limit {self.container.attrs['HostConfig'].get('Memory', 0) // 2**20} MiB)"
        else:
            why = f"the container exited with code {code}"
        with contextlib.suppress(Exception):
            tail = self.container.logs(tail=8).decode(errors="replace").strip().splitlines()
            if tail:
                why += "; last output: " + " | ".join(tail)
        self._reason = why
        return why

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.container.remove(force=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<ContainerServer {self.env_ref} {self.container.short_id} sessions={self.sessions}>"


def ensure_image(located: Located, digest: str, *, client: Any, log_line: Callable[[str], None] | None = None) -> str:
    """The image tag serving this artifact, built when missing and recorded in the local registry."""
    built = build_image(located.folder, digest=digest, client=client, log=log_line or log.info)
    if located.registry == "local":
        with contextlib.suppress(Exception):
            record_image(located.manifest, built)
    return built.tag


def container_starter(located: Located, digest: str) -> Callable[[], ManagedServer]:
    """A function that starts one container of this environment (the image is built once, lazily)."""
    global _swept
    client = docker_client()
    with _sweep_lock:
        if not _swept:
            sweep_orphans(client)
            _swept = True
    image: list[str] = []
    lock = threading.Lock()

    def start() -> ManagedServer:
        with lock:
            if not image:
                image.append(ensure_image(located, digest, client=client))
        return ContainerServer(client, image[0], located.manifest)

    return start
