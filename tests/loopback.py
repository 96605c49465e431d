"""Servers on 127.0.0.1 for the tests: a free port, and waiting for a server to answer its health check."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable

import httpx


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers_200(response: httpx.Response) -> bool:
    return response.status_code == 200


def wait_healthy(
    url: str,
    proc: subprocess.Popen | None = None,
    *,
    path: str = "/health",
    healthy: Callable[[httpx.Response], bool] = answers_200,
    timeout_s: float = 60,
    poll_s: float = 0.1,
) -> None:
    """Returns once ``GET url+path`` answers as ``healthy`` wants (a 200, by default). A server child
    ``proc`` (its stderr piped) that exits first is a RuntimeError with the end of its stderr."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if healthy(httpx.get(url + path, timeout=2)):
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, f"{url} did not answer {path} within {timeout_s} s"
        time.sleep(poll_s)
