"""The ``ray`` runtime: the process runtime's server, started by Ray actors across a Ray cluster.

Each pooled server is one actor, placed by Ray (``SPREAD`` over the nodes) with the resources of the
manifest's ``[limits]`` (``cpus`` as ``num_cpus``, ``memory_mb`` as ``memory``). The actor starts the
unchanged :class:`~envhub.runtime.process.ProcessServer` on its node; the caller talks the session
protocol to it directly, so Ray carries only the control plane (start, liveness, stop), not the steps.
The pool's bounds hold the actors: at most ``max_servers`` of them, shrunk back to ``warm`` when idle
(see :mod:`envhub.runtime.pool`); unbounded, a start the cluster has no CPUs for waits up to
``start_timeout_s`` for Ray to place it, then fails with :class:`~envhub.errors.RuntimeDiedError`.

The caller's ``ray.init(address=...)`` is used when Ray is already initialised; else ``$RAY_ADDRESS``
names the cluster; with neither, a local Ray instance starts on 127.0.0.1.

Faults: an actor or node that dies takes its server with it (the server exits when its parent, the
actor's worker, is gone), so its episodes end with :class:`~envhub.errors.RuntimeDiedError`; the pool
drops that server and the next ``reset`` leases a seat on a new actor.

The server listens on a Unix socket in the node's temporary folder, and the environment's folder is
read at the same path on the node: nodes must share this machine's file system (one machine, several
Ray nodes). Serving nodes on other machines needs TCP and the artifact shipped to them; not yet done.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from envhub.identity.manifest import Manifest
from envhub.runtime.pool import ManagedServer

#: Seconds one liveness probe may wait for the actor's answer before it counts as "not known yet".
PROBE_WAIT_S = 0.05
#: Seconds ``stop`` waits for the actor to stop its server before the actor is killed.
STOP_WAIT_S = 10.0

_init_lock = threading.Lock()
_actor_class: Any = None


def ensure_ray() -> Any:
    """The ``ray`` module, initialised: the caller's cluster, ``$RAY_ADDRESS``'s, or a new local one."""
    import ray

    with _init_lock:
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            if not address:
                # A local instance on loopback only, never an existing cluster found by chance.
                _stay_on_loopback()
                ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
            elif _is_loopback(address):
                # A cluster on this machine's loopback: this driver must join it there too.
                _stay_on_loopback()
                ray.init(address=address, _node_ip_address="127.0.0.1", log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
    return ray


def _is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _stay_on_loopback() -> None:
    """Ray rewrites 127.0.0.1 to the machine's outward address (so a driver joining
    ``127.0.0.1:PORT`` dials another address and waits there for ever): keep loopback as given."""
    import ray._private.services as services

    services.resolve_ip_for_localhost = lambda host: host


def _server_host_class(ray: Any) -> Any:
    """The actor class, defined once Ray is imported (``ray.remote`` needs it)."""
    global _actor_class
    if _actor_class is None:

        class ServerHost:
            """Runs one :class:`ProcessServer` on the actor's node and answers for it."""

            def __init__(self, folder: str, manifest: dict, digest: str, start_timeout_s: float) -> None:
                from envhub.runtime.process import ProcessServer

                self.server = ProcessServer(Path(folder), Manifest.model_validate(manifest), digest)
                self.server.wait_healthy(start_timeout_s)

            def where(self) -> dict[str, Any]:
                import ray as ray_in_actor

                context = ray_in_actor.get_runtime_context()
                return {"uds": self.server.uds, "node_id": context.get_node_id(), "pid": os.getpid(),
                        "server_pid": self.server.proc.pid}  # fmt: skip

            def exit_reason(self) -> str | None:
                return self.server.exit_reason()

            def stop(self) -> None:
                self.server.stop()

        _actor_class = ray.remote(max_restarts=0, max_task_retries=0)(ServerHost)
    return _actor_class


class RayServer(ManagedServer):
    """One pooled server: a Ray actor running the process runtime's server on its node."""

    def __init__(self, folder: Path, manifest: Manifest, digest: str, *, start_timeout_s: float = 60.0) -> None:
        super().__init__()
        ray = ensure_ray()
        self._ray = ray
        self.env_ref = manifest.ref
        limits = manifest.limits
        self.actor = _server_host_class(ray).options(
            num_cpus=limits.cpus,
            memory=limits.memory_mb * 1024 * 1024,
            scheduling_strategy="SPREAD",
        ).remote(str(folder), manifest.model_dump(mode="json"), digest, start_timeout_s)
        self._probe: Any = None
        self._reason: str | None = None
        try:
            self.placed: dict[str, Any] = ray.get(self.actor.where.remote(), timeout=start_timeout_s)
        except Exception as exc:
            self._kill()
            from envhub.errors import RuntimeDiedError

            why = f"its Ray actor did not start: {exc}"
            if isinstance(exc, ray.exceptions.GetTimeoutError):  # most often: no node has room for it
                why = (f"no Ray node started its actor within {start_timeout_s:g} s; each server asks for "
                       f"{limits.cpus:g} CPU and {limits.memory_mb} MB ([limits]): add nodes, or seat more "
                       "sessions a server (runtime_options sessions_per_server) or bound the fleet (max_servers)")  # fmt: skip
            raise RuntimeDiedError(self.env_ref, why) from exc
        self.uds = self.placed["uds"]

    def exit_reason(self) -> str | None:
        """Why the actor or its server stopped; None while both run or while the answer is not in yet
        (each call waits :data:`PROBE_WAIT_S` at most, so a node that stopped answering never blocks)."""
        if self._reason is not None:
            return self._reason
        ray = self._ray
        if self._probe is None:
            self._probe = self.actor.exit_reason.remote()
        ready, _ = ray.wait([self._probe], timeout=PROBE_WAIT_S)
        if not ready:
            return None
        probe, self._probe = self._probe, None
        try:
            reason = ray.get(probe)
        except ray.exceptions.RayError as exc:  # the actor, its worker or its node died
            reason = f"its Ray actor on node {self.placed.get('node_id', '?')[:12]} died: {type(exc).__name__}: {_first_line(exc)}"
        self._reason = reason
        return reason

    def stop(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            # This driver left Ray (its own exit hook runs before the pools'): the actors it owned,
            # and their servers, went with it. Asking would only connect to the cluster again.
            return
        try:
            ray.get(self.actor.stop.remote(), timeout=STOP_WAIT_S)
        except Exception:  # a dead actor: its server exited with it
            pass
        self._kill()

    def _kill(self) -> None:
        try:
            self._ray.kill(self.actor, no_restart=True)
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<RayServer {self.env_ref} node={self.placed.get('node_id', '?')[:12]} sessions={self.sessions}>"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""
