"""Servers on 127.0.0.1 for the tests: a free port, waiting for a server to answer its health check,
and a server command run in a child process for as long as a ``with`` block."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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


@contextlib.contextmanager
def serve(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, **health) -> Iterator[str]:
    """``cmd --host 127.0.0.1 --port P`` in a child process; yields its URL once it is healthy (``health``:
    :func:`wait_healthy`'s options), and stops it when the block ends."""
    port = free_port()
    proc = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", str(port)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, **health)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
