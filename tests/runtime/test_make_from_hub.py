"""``envhub.make("ns/name@v")`` resolves through the configured registry (a real hub on 127.0.0.1):
what this machine lacks is pulled, checked against its digest and installed, and runs here only
under the trust rules; where it cannot be pulled, the error names the `envhub pull` command."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import envhub
from envhub.cli import build_app
from envhub.errors import DigestMismatchError, EnvNotFoundError, RegistryError, UntrustedCodeError, VersionNotFoundError
from envhub.registry import LocalRegistry
from envhub.registry.installed import PULLED


@pytest.fixture
def alice_adder(hub, env_factory):
    """alice/adder@1.0.0, private on the hub: only a token of alice's may see it."""
    entry, _ = hub.client("alice").publish(env_factory(namespace="alice"), private=True)
    return entry


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.output


def login(hub, user: str) -> None:
    code, output = cli("login", hub.url, "--token", hub.tokens[user], "--default")
    assert code == 0, output


def installed(ref: str):
    local = LocalRegistry()
    entry, version = local.resolve(ref)
    return version, local.verify_installed(entry, version)


def test_make_pulls_what_this_machine_lacks_from_the_configured_hub_and_trust_still_applies(hub, alice_adder):
    login(hub, "alice")
    with pytest.raises(UntrustedCodeError) as info:  # pulled, but alice's code does not run here untrusted
        envhub.make("alice/adder@1.0.0", level="easy")
    assert hub.url in str(info.value) and "`envhub trust alice`" in str(info.value)
    version, record = installed("alice/adder@1.0.0")
    assert version.digest == alice_adder.digest  # the hub's digest, checked before it was unpacked
    assert (record.origin, record.source) == (PULLED, f"the hub at {hub.url}")

    assert cli("trust", "alice")[0] == 0
    env = envhub.make("alice/adder@1.0.0", level="easy")
    assert env.identity.digest == alice_adder.digest
    obs, _ = env.reset(seed=0)
    assert obs == envhub.make(envhub.locate("alice/adder@1.0.0").folder, level="easy").reset(seed=0)[0]
    # installed now: found here again, without asking the hub
    hub.stop()
    assert envhub.make("alice/adder@^1", level="easy").identity.digest == alice_adder.digest


def test_make_refuses_an_artifact_that_does_not_match_its_digest(hub, alice_adder):
    from envhub.hub.storage import artifact_key

    login(hub, "alice")
    hub.hub.storage.put(artifact_key(alice_adder.digest), b"not the artifact that was published")
    with pytest.raises(DigestMismatchError):
        envhub.make("alice/adder@1.0.0", runtime="docker")
    assert "alice/adder" not in LocalRegistry().index().environments  # nothing was installed


def test_make_without_a_registry_names_the_pull_command(home):
    with pytest.raises(EnvNotFoundError) as info:
        envhub.make("alice/adder@1.0.0")
    assert "`envhub pull alice/adder@1.0.0 --registry URL`" in str(info.value)
    assert "envhub pull alice/adder@1.0.0 --registry URL" in info.value.hint


def test_make_names_the_pull_command_when_the_configured_hub_cannot_be_asked(hub, alice_adder):
    login(hub, "alice")
    hub.stop()
    with pytest.raises(RegistryError) as info:
        envhub.make("alice/adder@1.0.0")
    message = str(info.value)
    assert "alice/adder@1.0.0" in message and hub.url in message
    assert f"envhub pull alice/adder@1.0.0 --registry {hub.url}" in info.value.hint


def test_make_through_a_hub_that_does_not_have_it_or_does_not_show_it(hub, alice_adder):
    login(hub, "bob")  # bob's token may not see alice's private environment: the hub answers 404
    with pytest.raises(EnvNotFoundError) as info:
        envhub.make("alice/adder@1.0.0")
    assert hub.url in str(info.value) and f"envhub login {hub.url}" in info.value.hint
    assert "alice/adder" not in LocalRegistry().index().environments
    login(hub, "alice")
    with pytest.raises(VersionNotFoundError) as missing:
        envhub.make("alice/adder@2.0.0")
    assert missing.value.available == ["1.0.0"]


@pytest.mark.docker
def test_make_pulls_untrusted_code_from_the_hub_and_runs_it_in_docker(hub, alice_adder, docker_engine):
    login(hub, "alice")
    env = envhub.make("alice/adder@1.0.0", runtime="docker", level="easy")  # alice is not trusted: a container
    try:
        assert env.identity.digest == alice_adder.digest
        obs, _ = env.reset(seed=0)
        assert obs == envhub.make(envhub.locate("alice/adder@1.0.0").folder, level="easy").reset(seed=0)[0]
    finally:
        env.close()
