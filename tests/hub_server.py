"""A real hub for the tests: uvicorn on 127.0.0.1 (a random port) over a real SQLite file and a
local-disk artifact store, in a thread; or ``envhub hub serve`` in a subprocess, for the tests that
kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from loopback import free_port, wait_healthy

from envhub.hub import HubSettings, create_app
from envhub.hub.app import uvicorn_options
from envhub.registry.http import HubRegistry


def publish_at_once(client: Callable[[int], HubRegistry], blobs: list[bytes], *, namespace: str, name: str, version: str = "1.0.0",
                    private: bool = False, timeout_s: float = 60) -> list[object]:  # fmt: skip
    """Publish every blob as ``namespace/name@version`` at the same moment, one thread each, blob ``i``
    through ``client(i)``; returns each publish's result ``(entry, created)`` or the exception it
    raised, in order."""
    results: list[object] = [None] * len(blobs)
    barrier = threading.Barrier(len(blobs))

    def publish(i: int) -> None:
        registry = client(i)
        barrier.wait()
        try:
            results[i] = registry.publish_bytes(blobs[i], namespace=namespace, name=name, version=version, private=private)
        except Exception as exc:  # noqa: BLE001 - returned to the test, which asserts on it
            results[i] = exc

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(len(blobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s)
    return results


@dataclass
class RunningHub:
    url: str
    app: object
    server: uvicorn.Server
    thread: threading.Thread
    data: Path
    tokens: dict[str, str]

    @property
    def hub(self):
        return self.app.state.hub

    def client(self, user: str | None = None) -> HubRegistry:
        return HubRegistry(self.url, token=self.tokens.get(user) if user else None)

    def race(self, user: str, blobs: list[bytes], *, name: str, version: str = "1.0.0", private: bool = False) -> list[object]:
        """:func:`publish_at_once` as ``user/name@version``, each blob with a client of its own."""
        return publish_at_once(lambda i: self.client(user), blobs, namespace=user, name=name, version=version, private=private)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_hub(data: Path, **settings) -> RunningHub:
    """A hub over ``data`` with the users admin (an admin), alice and bob, their tokens in ``tokens``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(HubSettings(data_dir=data, public_url=url, **settings))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", **uvicorn_options(app.state.settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the hub did not start")
        time.sleep(0.02)
    tokens = {}
    for name, admin in (("admin", True), ("alice", False), ("bob", False)):
        tokens[name] = app.state.hub.create_user(name, is_admin=admin)[1]
    return RunningHub(url, app, server, thread, data, tokens)


class HubProcess:
    """``envhub hub serve`` in a child process, which a test may kill and start again."""

    def __init__(self, data: Path, *args: str) -> None:
        self.data = data
        self.args = list(args)  # more `envhub hub serve` options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-c", "from envhub.cli import main; main()", "hub", "serve", "--data", str(self.data), "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "ENVHUB_DEBUG": "1"})
        wait_healthy(self.url, self.proc, path="/api/v1/health", timeout_s=60)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
