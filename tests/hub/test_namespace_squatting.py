"""Issue 13, finding 3: nobody may take the bundled namespace (or one the hub reserves), and a bare
name reaches only the bundled environments and the user's own, never a guess among other namespaces."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

import envhub
from envhub.cli import build_app
from envhub.errors import BareNameError, ConflictError, EnvNotFoundError
from envhub.runtime.make import pull


def test_bundled_namespace_is_reserved(hub):
    for user in ("bob", "admin"):
        taken = httpx.post(f"{hub.url}/api/v1/orgs", json={"name": "envhub"}, headers={"Authorization": f"Bearer {hub.tokens[user]}"})
        assert taken.status_code == 409 and "reserved" in taken.json()["error"]["message"], taken.text
    made = httpx.post(f"{hub.url}/api/v1/users", json={"name": "envhub"}, headers={"Authorization": f"Bearer {hub.tokens['admin']}"})
    assert made.status_code == 409
    with pytest.raises(ConflictError, match="reserved"):
        hub.hub.create_user("envhub")


def test_configured_reserved_namespaces(tmp_path, hub_factory):
    running = hub_factory(tmp_path / "data", reserved_namespaces=["envhub", "acme"])
    taken = httpx.post(f"{running.url}/api/v1/orgs", json={"name": "acme"}, headers={"Authorization": f"Bearer {running.tokens['alice']}"})
    assert taken.status_code == 409
    result = CliRunner().invoke(build_app(), ["hub", "adduser", "corp", "--data", str(tmp_path / "cli"), "--reserve", "corp"])
    assert isinstance(result.exception, ConflictError)


def test_bare_name_from_a_hub_lists_the_candidates(hub, env_folder, isolated_home):
    hub.client("bob").publish(env_folder(namespace="bob", name="arithmetic", version="9.0.0"))
    hub.client("alice").publish(env_folder(namespace="alice", name="arithmetic", version="9.1.0"))
    result = CliRunner().invoke(build_app(), ["pull", "arithmetic", "--registry", hub.url])
    assert isinstance(result.exception, BareNameError), result.output
    assert result.exception.suggestions == ["alice/arithmetic", "bob/arithmetic"]
    assert not (isolated_home / "envs" / "bob").exists() and not (isolated_home / "envs" / "alice").exists()
    assert isinstance(CliRunner().invoke(build_app(), ["versions", "arithmetic", "--registry", hub.url]).exception, BareNameError)
    # In full, it is pulled.
    assert pull("bob/arithmetic", source=hub.client())[2]


def test_bare_name_locally_is_bundled_or_own(hub, env_folder, isolated_home):
    hub.client("bob").publish(env_folder(namespace="bob", name="arithmetic", version="9.0.0"))
    hub.client("bob").publish(env_folder(namespace="bob", name="lonely"))
    pull("bob/arithmetic", source=hub.client())
    pull("bob/lonely", source=hub.client())
    # Pulled from a hub, bob's is not what the bare name means: the bundled one is.
    located = envhub.locate("arithmetic")
    assert located.manifest.namespace == "envhub" and located.registry == "bundled"
    with pytest.raises(EnvNotFoundError) as missing:
        envhub.locate("lonely")
    assert missing.value.suggestions == ["bob/lonely"]
    assert envhub.locate("bob/lonely").manifest.namespace == "bob"
    # The user's own (published from a folder) is.
    from envhub.registry.local import LocalRegistry

    LocalRegistry().publish(env_folder(namespace="mine", name="lonely", version="0.1.0"))
    assert envhub.locate("lonely").manifest.namespace == "mine"
