"""Pools of started servers (child processes or containers), shared by the environments made on them.

A server holds up to ``sessions_per_server`` sessions: ``make`` leases a seat on a running server
with room, or starts one. Released servers stay warm: ``warm`` idle servers are kept ready, and any
more are stopped after ``idle_ttl_s`` seconds. A server that failed (died, hung) is stopped and never
lent again. Every pool is closed when the interpreter exits.

The fleet grows and shrinks with demand within bounds: it never runs more than ``max_servers`` live
servers (unbounded by default), and shrinks back to ``warm`` idle ones. When every seat of a pool at
``max_servers`` is taken, ``make`` waits up to ``lease_timeout_s`` for a seat to come free (an
environment closed, a server stopped) and then raises :class:`~envhub.errors.CapacityError`, which
names the bound; it never seats more than ``sessions_per_server`` sessions on one server.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from envhub.errors import CapacityError, RuntimeDiedError
from envhub.http.transport import ConnectionPool, run_blocking
from envhub.runtime.client import UDS_BASE_URL
from envhub.runtime.server.protocol import MAX_SESSIONS

log = logging.getLogger("envhub.runtime.remote")

SESSIONS_PER_SERVER_ENV = "ENVHUB_SESSIONS_PER_SERVER"
WARM_ENV = "ENVHUB_WARM_SERVERS"
LIVENESS_CHECK_S = 5.0


@dataclass
class PoolOptions:
    """How a runtime's pool shares servers. ``make(..., runtime_options={...})`` sets these.

    Defaults differ by runtime (:data:`RUNTIME_DEFAULTS`): a child process starts in about a second
    and is stopped as soon as its last environment closes; a container is kept warm.
    """

    #: Sessions one server (process or container) holds; 1 isolates every environment.
    sessions_per_server: int = 64
    #: Idle servers kept started, ready for the next ``make``.
    warm: int = 1
    #: Seconds an idle server beyond ``warm`` lives before it is stopped (0: at once).
    idle_ttl_s: float = 30.0
    #: Seconds to wait for a new server to answer its health check.
    start_timeout_s: float = 60.0
    #: Most live servers at once (None: unbounded); ``warm`` is the lower bound. Past it, ``make``
    #: waits for a seat on a full fleet instead of starting a server.
    max_servers: int | None = None
    #: Seconds ``make`` waits for a seat when every server is full and the pool is at ``max_servers``,
    #: before it raises :class:`~envhub.errors.CapacityError`.
    lease_timeout_s: float = 60.0

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None, *, runtime: str = "docker") -> PoolOptions:
        options = dict(options or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown runtime option(s) {unknown}; known: {sorted(known)}")
        defaults = dict(RUNTIME_DEFAULTS.get(runtime, {}))
        if os.environ.get(SESSIONS_PER_SERVER_ENV):
            defaults["sessions_per_server"] = int(os.environ[SESSIONS_PER_SERVER_ENV])
        if os.environ.get(WARM_ENV):
            defaults["warm"] = int(os.environ[WARM_ENV])
        out = cls(**{**defaults, **options})
        if out.sessions_per_server < 1 or out.warm < 0 or out.idle_ttl_s < 0 or out.lease_timeout_s < 0:
            raise ValueError("sessions_per_server must be >= 1, warm, idle_ttl_s and lease_timeout_s >= 0")
        if out.max_servers is not None and not (isinstance(out.max_servers, int) and out.max_servers >= max(1, out.warm)):
            raise ValueError(f"max_servers must be None or an integer >= 1 and >= warm ({out.warm}), not {out.max_servers!r}")
        if out.sessions_per_server > MAX_SESSIONS:  # the server would refuse the seats past it
            raise ValueError(f"sessions_per_server must be <= {MAX_SESSIONS}, the sessions one server holds")
        return out


#: Per-runtime defaults of :class:`PoolOptions` (``$ENVHUB_SESSIONS_PER_SERVER`` and
#: ``$ENVHUB_WARM_SERVERS`` override them; ``runtime_options`` override both).
RUNTIME_DEFAULTS: dict[str, dict[str, Any]] = {
    "process": {"warm": 0, "idle_ttl_s": 0.0},
    "docker": {"warm": 1, "idle_ttl_s": 30.0},
    "ray": {"warm": 0, "idle_ttl_s": 0.0},
}


class ManagedServer(ABC):
    """One started server of a pool, listening on a Unix socket."""

    url = UDS_BASE_URL
    uds: str
    env_ref: str

    def __init__(self) -> None:
        self.sessions = 0
        self.broken = False
        self.idle_since: float | None = time.monotonic()
        self.checked_at = time.monotonic()

    @abstractmethod
    def exit_reason(self) -> str | None:
        """None while the server runs; else why it stopped."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server and remove what it left (socket folder, container)."""

    def wait_healthy(self, timeout_s: float) -> None:
        """Block until ``GET /healthz`` answers; :class:`RuntimeDiedError` if the server exits first."""
        deadline = time.monotonic() + timeout_s
        pool = ConnectionPool.for_url(self.url, uds=self.uds)
        try:
            delay = 0.02
            while True:
                reason = self.exit_reason()
                if reason is not None:
                    raise RuntimeDiedError(self.env_ref, f"it stopped while starting: {reason}")
                if os.path.exists(self.uds):
                    with contextlib.suppress(OSError, TimeoutError):
                        if run_blocking(pool.request("GET", "/healthz", timeout=2.0)).status_code == 200:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeDiedError(self.env_ref, f"it did not answer its health check within {timeout_s:g} s")
                time.sleep(delay)
                delay = min(delay * 1.5, 0.25)
        finally:
            run_blocking(pool.aclose())


class Lease:
    """One environment's seat on a pooled server (see :class:`envhub.runtime.client.ServerLease`)."""

    def __init__(self, pool: ServerPool, server: ManagedServer) -> None:
        self._pool = pool
        self.server = server
        self.url = server.url
        self.uds: str | None = server.uds
        self._released = False

    def describe_death(self) -> str | None:
        # A server that just dropped a connection may need a moment before its exit status shows.
        for _ in range(40):
            reason = self.server.exit_reason()
            if reason is not None:
                return reason
            time.sleep(0.05)
        return None

    def release(self, *, broken: bool = False) -> None:
        if self._released:
            return
        self._released = True
        self._pool._release(self.server, broken=broken)


class ServerPool:
    """Started servers of one environment build, lent seat by seat."""

    def __init__(self, name: str, start: Callable[[], ManagedServer], options: PoolOptions) -> None:
        self.name = name
        self._start = start
        self.options = options
        self.servers: list[ManagedServer] = []
        self._lock = threading.Lock()
        #: Notified under ``_lock`` whenever a seat or a server's room comes free, for waiting leases.
        self._changed = threading.Condition(self._lock)
        self._start_lock = threading.Lock()
        self._closed = False
        _register(self)

    def lease(self) -> Lease:
        """A seat on a live server with room (the fullest first, to keep few servers), else a new one.

        Starts are one at a time: callers that arrive while a server starts wait for it and take its
        free seats, rather than each starting a server of their own. At ``max_servers`` live servers
        with every seat taken, the caller waits up to ``lease_timeout_s`` for a seat or for room to
        start a server, then gets :class:`~envhub.errors.CapacityError`.
        """
        deadline: float | None = None
        while True:
            lease = self._take_seat()
            if lease is not None:
                return lease
            with self._start_lock:
                lease = self._take_seat()  # a server started while this caller waited may have room
                if lease is not None:
                    return lease
                if self._may_start():
                    server = self._start_one()
                    with self._lock:
                        server.sessions += 1
                        server.idle_since = None
                        self.servers.append(server)
                    return Lease(self, server)
            if deadline is None:
                deadline = time.monotonic() + self.options.lease_timeout_s
            with self._changed:
                if not self._changed.wait_for(self._seat_or_room, timeout=max(0.0, deadline - time.monotonic())):
                    raise self._full_error()

    def _live(self) -> list[ManagedServer]:
        return [s for s in self.servers if not s.broken]

    def _may_start(self) -> bool:
        """Room for one more server under ``max_servers`` (callers hold ``_start_lock``)."""
        with self._lock:
            return self.options.max_servers is None or len(self._live()) < self.options.max_servers

    def _seat_or_room(self) -> bool:
        """A free seat, room for a server, or a closed pool (callers hold ``_lock``)."""
        live = self._live()
        cap, bound = self.options.sessions_per_server, self.options.max_servers
        return self._closed or any(s.sessions < cap for s in live) or bound is None or len(live) < bound

    def _full_error(self) -> CapacityError:
        o = self.options
        return CapacityError(
            (o.max_servers or 0) * o.sessions_per_server,
            where=f"the {self.name} pool, at max_servers={o.max_servers} of sessions_per_server={o.sessions_per_server},",
            what=f"sessions, and none came free within lease_timeout_s={o.lease_timeout_s:g} s",
            hint="close environments you no longer use, or raise runtime_options max_servers (or sessions_per_server, "
            "or lease_timeout_s to wait longer)",
        )

    def _take_seat(self) -> Lease | None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"pool {self.name} is closed")
            cap = self.options.sessions_per_server
            candidates = [s for s in self._live() if s.sessions < cap]
            if not candidates:
                return None
            server = max(candidates, key=lambda s: s.sessions)
            server.sessions += 1
            server.idle_since = None
            return Lease(self, server)

    def _start_one(self) -> ManagedServer:
        server = self._start()
        try:
            server.wait_healthy(self.options.start_timeout_s)
        except BaseException:
            with contextlib.suppress(Exception):
                server.stop()
            raise
        return server

    def prewarm(self, n: int | None = None) -> int:
        """Start servers until ``n`` (default: ``warm``) are idle and ready; returns how many started."""
        n = self.options.warm if n is None else n
        with self._lock:
            idle = sum(1 for s in self.servers if s.sessions == 0 and not s.broken)
        started = 0
        for _ in range(max(0, n - idle)):
            with self._start_lock:
                if not self._may_start():  # never past max_servers
                    break
                server = self._start_one()
                with self._lock:
                    self.servers.append(server)
            started += 1
        return started

    def _release(self, server: ManagedServer, *, broken: bool) -> None:
        stop = False
        with self._lock:
            server.sessions = max(0, server.sessions - 1)
            if broken and not server.broken:
                server.broken = True
            idle = [s for s in self.servers if s.sessions == 0 and not s.broken and s is not server]
            if server.sessions == 0 and (
                server.broken or (self.options.idle_ttl_s == 0 and len(idle) >= self.options.warm)
            ):
                self._forget(server)  # stopped now: nothing keeps it warm
                stop = True
            elif server.sessions == 0:
                server.idle_since = time.monotonic()
            self._changed.notify_all()
        if stop:
            _stop_quietly(server)
        elif server.broken is False and server.sessions == 0:
            _ensure_janitor()

    def _forget(self, server: ManagedServer) -> None:
        """Drop a server from the pool (callers hold ``_lock``); its room goes to a waiting lease."""
        with contextlib.suppress(ValueError):
            self.servers.remove(server)
        self._changed.notify_all()

    def tidy(self) -> None:
        """Stop dead servers, and idle ones past ``idle_ttl_s`` beyond the ``warm`` kept ready."""
        now = time.monotonic()
        to_stop: list[ManagedServer] = []
        with self._lock:
            idle = sorted(
                (s for s in self.servers if s.sessions == 0 and s.idle_since is not None),
                key=lambda s: s.idle_since or 0.0,
                reverse=True,  # the most recently used are kept warm
            )
            for i, server in enumerate(idle):
                if server.broken or (i >= self.options.warm and now - (server.idle_since or now) >= self.options.idle_ttl_s):
                    to_stop.append(server)
            for server in to_stop:
                self._forget(server)
        for server in to_stop:
            _stop_quietly(server)
        # Idle servers that died on their own (killed, out of memory) are dropped too; asked at most
        # every few seconds, since asking a container costs an engine call.
        for server in [s for s in idle if s not in to_stop]:
            if now - server.checked_at < LIVENESS_CHECK_S:
                continue
            server.checked_at = now
            if server.exit_reason() is not None:
                with self._lock:
                    if server.sessions == 0:
                        self._forget(server)
                _stop_quietly(server)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            servers, self.servers = self.servers, []
            self._changed.notify_all()
        for server in servers:
            _stop_quietly(server)

    def __repr__(self) -> str:
        return f"<ServerPool {self.name}: {len(self.servers)} server(s), {sum(s.sessions for s in self.servers)} session(s)>"


def _stop_quietly(server: ManagedServer) -> None:
    try:
        server.stop()
    except Exception as exc:  # stopping must never raise into a caller that is cleaning up
        log.warning("could not stop %r: %s", server, exc)


_pools: weakref.WeakSet[ServerPool] = weakref.WeakSet()
_janitor: threading.Thread | None = None
_janitor_lock = threading.Lock()


def _register(pool: ServerPool) -> None:
    _pools.add(pool)


def _ensure_janitor() -> None:
    global _janitor
    with _janitor_lock:
        if _janitor is not None and _janitor.is_alive():
            return

        def run() -> None:
            while True:
                time.sleep(0.5)
                for pool in list(_pools):
                    with contextlib.suppress(Exception):
                        pool.tidy()

        _janitor = threading.Thread(target=run, name="envhub-pool-janitor", daemon=True)
        _janitor.start()


@atexit.register
def close_all_pools() -> None:
    """Stop every pooled server of this interpreter (run at exit)."""
    for pool in list(_pools):
        pool.close()
