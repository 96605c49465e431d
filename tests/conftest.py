"""Fixtures for the tests of every package that need a registry: an isolated ENVHUB_HOME,
environment folders to publish, a real hub.

pytest puts this folder on ``sys.path`` (it has a conftest.py and no ``__init__.py``), so the test
helpers beside it import by name from any test: ``registry_setup``, ``hub_server``, ``loopback``."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_server import start_hub
from registry_setup import isolate, make_env_folder


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    return isolate(tmp_path, monkeypatch)


@pytest.fixture
def env_factory(tmp_path):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)

    def factory(**kwargs) -> Path:
        return make_env_folder(src, **kwargs)

    return factory


@pytest.fixture
def hub(tmp_path, home):
    """A hub on 127.0.0.1 with the users admin, alice and bob (:func:`hub_server.start_hub`)."""
    running = start_hub(tmp_path / "hub-data")
    yield running
    running.stop()
