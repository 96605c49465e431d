"""Pulled code runs on this machine only from a trusted namespace; docker is always allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import envhub
from envhub.cli import build_app
from envhub.errors import DockerUnavailableError, InvalidEnvIdError, UntrustedCodeError
from envhub.registry import LocalRegistry, StaticRegistry, export_static
from envhub.registry.config import config_path, trusted_namespaces
from envhub.runtime.make import pull
from envhub.runtime.remote import pool_for

def cli(*args: str):
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


def static_registry(tmp_path: Path, folder: Path) -> StaticRegistry:
    upstream = LocalRegistry(tmp_path / "upstream")
    upstream.publish(folder)
    export_static(upstream, tmp_path / "static")
    return StaticRegistry(tmp_path / "static")


def test_code_pulled_from_a_hub_runs_here_only_once_its_namespace_is_trusted(hub, env_factory, monkeypatch):
    hub.client("alice").publish(env_factory(namespace="alice"))
    code, output = cli("pull", "alice/adder", "--registry", hub.url)
    assert code == 0, output
    for runtime in ("inprocess", "process"):
        with pytest.raises(UntrustedCodeError) as info:
            envhub.make("alice/adder", runtime=runtime, level="easy")
        message = str(info.value)
        assert "\n" not in message and hub.url in message
        assert 'runtime="docker"' in message and "`envhub trust alice`" in message and f'"{runtime}"' in message
    with pytest.raises(UntrustedCodeError):
        envhub.make("alice/adder")  # the default runtime, as eval, train, audit and play use it
    with pytest.raises(UntrustedCodeError):
        pool_for("process", envhub.locate("alice/adder"))  # make_async and prewarm start here
    # The docker runtime is not refused: with no engine at this address, the next error is docker's own.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(DockerUnavailableError):
        envhub.make("alice/adder", runtime="docker")

    code, output = cli("trust", "alice")
    assert code == 0 and "now trusted" in output, output
    assert trusted_namespaces() == ["alice"]
    assert 'trusted_namespaces = ["alice"]' in config_path().read_text()
    env = envhub.make("alice/adder", level="easy")
    assert env.identity.digest == envhub.locate("alice/adder").digest
    remote = envhub.make("alice/adder", runtime="process")
    assert remote.reset(seed=0)[0] == envhub.make("alice/adder").reset(seed=0)[0]
    remote.close()
    assert cli("trust", "--list")[1].splitlines()[0] == "alice"

    assert cli("untrust", "alice")[0] == 0
    with pytest.raises(UntrustedCodeError):
        envhub.make("alice/adder")
    result = CliRunner().invoke(build_app(), ["trust", "Not A Namespace"])
    assert isinstance(result.exception, InvalidEnvIdError) and "a namespace is" in str(result.exception)


def test_trust_follows_origin_not_the_namespace_name(home, env_factory, tmp_path):
    # A registry that serves an `envhub/...` environment is not envhub: its code is pulled, not bundled.
    squatted = static_registry(tmp_path, env_factory(namespace="envhub", name="adder"))
    pull("envhub/adder", source=squatted)
    record = json.loads(next((home / "installed").rglob("*.json")).read_text())
    assert record["origin"] == "pulled" and record["source"] == squatted.description
    with pytest.raises(UntrustedCodeError, match="envhub trust envhub"):
        envhub.make("envhub/adder")
    # What envhub bundles, pulled from the bundled environments, and what the user publishes are trusted.
    pull("arithmetic")
    assert envhub.locate("envhub/arithmetic").origin == "bundled"
    envhub.make("envhub/arithmetic")
    folder = env_factory(namespace="mine")
    LocalRegistry(home).publish(folder)
    assert envhub.locate("mine/adder").origin == "published"
    envhub.make("mine/adder", runtime="inprocess")
    envhub.make(folder)  # a plain folder is the user's own


def test_publishing_a_pulled_version_from_a_folder_makes_it_the_users_own(home, env_factory, tmp_path):
    folder = env_factory(namespace="acme")
    pull("acme/adder", source=static_registry(tmp_path, folder))
    with pytest.raises(UntrustedCodeError):
        envhub.make("acme/adder")
    LocalRegistry(home).publish(folder)  # same content, from a folder the user points at
    assert envhub.locate("acme/adder").origin == "published"
    envhub.make("acme/adder")
    pull("acme/adder", source=StaticRegistry(tmp_path / "static"))  # pulling again takes nothing away
    assert envhub.locate("acme/adder").origin == "published"
