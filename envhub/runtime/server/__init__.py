"""``envhub serve``: one environment's episodes over HTTP, for the process and docker runtimes.

>>> from envhub.runtime.server import SessionServer, serve
>>> serve("environments/arithmetic", port=8000)          # blocks; Ctrl-C stops it

The protocol (routes, the step delta, error codes) is documented in :mod:`envhub.runtime.server.protocol`
and served as OpenAPI at ``GET /openapi.json``.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from envhub.runtime.server.app import ServerConfig, SessionServer
from envhub.runtime.server.connections import uvicorn_config
from envhub.runtime.server.protocol import CODES, PROTOCOL_VERSION

__all__ = ["CODES", "PROTOCOL_VERSION", "ServerConfig", "SessionServer", "serve", "uvicorn_config"]

log = logging.getLogger("envhub.runtime.server")


def _vm_data_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def limit_memory(memory_mb: int) -> int | None:
    """Cap this process's data memory at what it uses now plus ``memory_mb`` (RLIMIT_DATA).

    Environment code that allocates past it gets a ``MemoryError``, reported as an environment
    failure of its episode; the server keeps serving. Returns the limit in bytes, or None where
    the platform cannot tell the current use.
    """
    base = _vm_data_bytes()
    if base is None:
        return None
    limit = base + memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit


def _watch_parent(parent_pid: int) -> None:
    """Stop this server when the process that started it is gone (no orphans after a crash)."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5.0)
                os._exit(0)

    threading.Thread(target=watch, name="envhub-parent-watch", daemon=True).start()


def serve(
    folder: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    uds: str | None = None,
    digest: str | None = None,
    config: ServerConfig | None = None,
    memory_mb: int | None = None,
    parent_pid: int | None = None,
    log_level: str = "warning",
    on_ready: Callable[[SessionServer], None] | None = None,
    token: str | None = None,
) -> None:
    """Serve the environment in ``folder`` until interrupted (on ``uds`` when given, else host:port);
    with ``token``, every request must carry ``Authorization: Bearer TOKEN``."""
    import uvicorn

    server = SessionServer(folder, digest=digest, config=config, token=token)
    if memory_mb:
        server.prestart_threads()
        limit_memory(memory_mb)
    if parent_pid:
        _watch_parent(parent_pid)
    uv_config = uvicorn_config(
        server.app,
        header_timeout_s=server.config.header_timeout_s,
        host=host,
        port=port,
        uds=uds,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        backlog=4096,
        timeout_keep_alive=75,
    )
    uv_server = uvicorn.Server(uv_config)
    # What is loaded now lives as long as the server: keep it out of the collector's full passes,
    # whose pauses would otherwise show in every session's step latency.
    gc.collect()
    gc.freeze()
    if on_ready is not None:
        on_ready(server)
    uv_server.run()
    if server._hung:
        # Threads stuck in environment code would block the interpreter's exit forever.
        os._exit(0)
