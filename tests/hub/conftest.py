"""A real hub for the tests: uvicorn on 127.0.0.1 (a random port) over a real SQLite file and a
local-disk artifact store, in a thread; or in a subprocess, for the tests that kill it."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from envhub.hub import HubSettings, create_app
from envhub.hub.app import uvicorn_options
from envhub.registry.http import HubRegistry

ROOT = Path(__file__).resolve().parents[2]


def _registry_fixtures():
    spec = importlib.util.spec_from_file_location("_registry_fixtures", ROOT / "tests" / "registry" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fixtures = _registry_fixtures()
make_env_folder = _fixtures.make_env_folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        """Publish every blob as ``user/name@version`` at the same moment, one thread each; returns
        each publish's result ``(entry, created)`` or the exception it raised, in order."""
        results: list[object] = [None] * len(blobs)
        barrier = threading.Barrier(len(blobs))

        def publish(i: int) -> None:
            client = self.client(user)
            barrier.wait()
            try:
                results[i] = client.publish_bytes(blobs[i], namespace=user, name=name, version=version, private=private)
            except Exception as exc:  # noqa: BLE001 - returned to the test, which asserts on it
                results[i] = exc

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(len(blobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        return results

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_hub(data: Path, **settings) -> RunningHub:
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


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    return _fixtures.isolate(tmp_path, monkeypatch)


@pytest.fixture
def hub_factory():
    """``start_hub`` for tests that need other settings (another database); stopped at the end."""
    started: list[RunningHub] = []

    def factory(data: Path, **settings) -> RunningHub:
        started.append(start_hub(data, **settings))
        return started[-1]

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def hub(tmp_path, isolated_home):
    running = start_hub(tmp_path / "hub-data", max_upload_bytes=20 << 20, max_unpacked_bytes=8 << 20)
    yield running
    running.stop()


@pytest.fixture
def env_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    return lambda **kwargs: make_env_folder(src, **kwargs)


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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("hub process did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def hub_process():
    """A factory of :class:`HubProcess`; every process it made is killed at the end."""
    made: list[HubProcess] = []

    def factory(data: Path, *args: str) -> HubProcess:
        made.append(HubProcess(data, *args))
        return made[-1]

    yield factory
    for proc in made:
        proc.kill()
