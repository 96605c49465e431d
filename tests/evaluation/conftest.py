"""Fixtures for evaluation tests: an isolated ENVHUB_HOME and a scripted endpoint on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from evalhelpers import solve

from envhub.evaluation.model_server.scripted import ScriptedEndpoint, serve_in_thread


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "envhub-home"
    monkeypatch.setenv("ENVHUB_HOME", str(path))
    for var in ("ENVHUB_JUDGE_BASE_URL", "ENVHUB_JUDGE_MODEL", "ENVHUB_JUDGE_API_KEY", "ENVHUB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return path


@pytest.fixture
def endpoint(home):
    """(ScriptedEndpoint answering arithmetic correctly, its /v1 base URL)."""
    server = ScriptedEndpoint(solve)
    with serve_in_thread(server.app) as url:
        yield server, url
