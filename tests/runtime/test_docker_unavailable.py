"""Without a Docker engine, the docker runtime says so and what to do (no engine needed to test)."""

from __future__ import annotations

import pytest

import envhub
from envhub.errors import DockerUnavailableError


def test_no_engine_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    with pytest.raises(DockerUnavailableError, match="no Docker engine answers") as exc:
        envhub.make("arithmetic", runtime="docker")
    assert "setup-docker.sh" in exc.value.hint


def test_unknown_runtime_lists_the_known_ones():
    from envhub.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="'docker', 'inprocess', 'process'"):
        envhub.make("arithmetic", runtime="vm")
