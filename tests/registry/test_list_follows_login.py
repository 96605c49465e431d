"""``envhub login URL --default`` makes the hub the registry every reading command uses, `list` too;
``list --installed`` still shows what is on this machine."""

from __future__ import annotations

from typer.testing import CliRunner

from envhub.cli import build_app


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
