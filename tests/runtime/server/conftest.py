"""A real session server (uvicorn on a Unix socket, in a thread) for the server and client tests."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from envhub.runtime.server import ServerConfig, SessionServer


@contextlib.contextmanager
def running(folder: Path, sock: Path, **config):
    server = SessionServer(folder, config=ServerConfig(**config))
    uv = uvicorn.Server(uvicorn.Config(server.app, uds=str(sock), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield server, f"unix://{sock}"
    finally:
        uv.should_exit = True
        thread.join(10)


@pytest.fixture
def serve_env(tmp_path):
    """``serve_env(folder, **ServerConfig fields) -> (SessionServer, "unix://...")``, stopped after the test."""
    stack = contextlib.ExitStack()
    counter = iter(range(1000))

    def start(folder: Path, **config):
        return stack.enter_context(running(folder, tmp_path / f"s{next(counter)}.sock", **config))

    with stack:
        yield start
