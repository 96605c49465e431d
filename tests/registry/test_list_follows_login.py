"""``envhub login URL --default`` makes the hub the registry every reading command uses, `list` too;
``list --installed`` still shows what is on this machine."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from envhub.cli import build_app

ROOT = Path(__file__).resolve().parents[2]


def _start_hub():
    spec = importlib.util.spec_from_file_location("_hub_fixtures_list", ROOT / "tests" / "hub" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.start_hub


@pytest.fixture
def hub(tmp_path, home):
    running = _start_hub()(tmp_path / "hub-data")
    yield running
    running.stop()


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


def test_list_follows_login_default_like_info_and_publish(hub, env_factory):
    assert cli("publish", str(env_factory(namespace="acme", name="local-only")))[0] == 0  # on this machine
    hub.client("alice").publish(env_factory(namespace="alice", name="adder"), private=True)
    code, output = cli("login", hub.url, "--token", hub.tokens["alice"], "--default")
    assert code == 0, output

    code, listed = cli("list")
    assert code == 0, listed
    assert f"the hub at {hub.url}" in listed and "alice/adder" in listed and "(private)" in listed
    assert "acme/local-only" not in listed
    code, info = cli("info", "alice/adder")
    assert code == 0 and f"the hub at {hub.url}" in info  # info already followed it

    code, installed = cli("list", "--installed")
    assert code == 0, installed
    assert "acme/local-only" in installed and "alice/adder" not in installed


def test_list_installed_and_registry_are_one_or_the_other(home):
    code, output = cli("list", "--installed", "--registry", "http://127.0.0.1:1")
    assert code != 0 and "--installed" in output and "--registry" in output
