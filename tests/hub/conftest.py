"""Hub tests' fixtures: a hub with upload limits, hubs with other settings, hub processes to kill."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_server import HubProcess, RunningHub, start_hub


@pytest.fixture
def isolated_home(home) -> Path:
    """tests/conftest.py's ``home``, by the name the hub tests use."""
    return home


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
def env_folder(env_factory):
    """tests/conftest.py's ``env_factory``, by the name the hub tests use."""
    return env_factory


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
