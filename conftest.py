"""Test-wide settings: every test gets its own ENVHUB_HOME, so none touches ~/.envhub."""

import pytest


@pytest.fixture(autouse=True)
def envhub_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("envhub-home")
    monkeypatch.setenv("ENVHUB_HOME", str(home))
    monkeypatch.delenv("ENVHUB_LOCKFILE", raising=False)
    return home
