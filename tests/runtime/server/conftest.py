"""A real session server (uvicorn on a Unix socket or a loopback port, in a thread, set up as
``envhub serve`` sets it up) for the server and client tests."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import loopback
import pytest
import uvicorn

from envhub.runtime.server import ServerConfig, SessionServer, uvicorn_config


@contextlib.contextmanager
def running(folder: Path, sock: Path, *, port: int | None = None, token: str | None = None, **config):
    server = SessionServer(folder, config=ServerConfig(**config), token=token)
    options = {"uds": str(sock)} if port is None else {"host": "127.0.0.1", "port": port}
    uv = uvicorn.Server(
        uvicorn_config(server.app, header_timeout_s=server.config.header_timeout_s, log_level="warning", lifespan="on", **options)
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield server, f"unix://{sock}" if port is None else f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(10)


@pytest.fixture
def serve_env(tmp_path):
    """``serve_env(folder, port=None, token=None, **ServerConfig fields) -> (SessionServer, url)``, stopped
    after the test: on a Unix socket, or on 127.0.0.1:``port``."""
    stack = contextlib.ExitStack()
    counter = iter(range(1000))

    def start(folder: Path, **config):
        return stack.enter_context(running(folder, tmp_path / f"s{next(counter)}.sock", **config))

    with stack:
        yield start


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port free right now, for ``serve_env(..., port=free_port)``."""
    return loopback.free_port()
