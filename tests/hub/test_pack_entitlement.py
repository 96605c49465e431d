"""Issue 13, finding 5: a pack sells only its own namespace's environments, or those whose owner
allows it, checked again at every pull; the owner's audit log shows the grants and the pulls."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from envhub.cli import build_app
from envhub.errors import EnvNotFoundError, PermissionDeniedError
from envhub.registry.http import HubRegistry
from envhub.runtime.make import pull


def test_packs_sell_only_what_the_owner_allows(hub, env_folder, isolated_home):
    alice, bob = hub.client("alice"), hub.client("bob")
    carol = HubRegistry(hub.url, token=hub.hub.create_user("carol")[1])
    adder, _ = alice.publish(env_folder(namespace="alice", name="adder"))
    pack = {"namespace": "bob", "name": "resale", "version": "1.0.0", "license": "per lab",
            "environments": [{"ref": "alice/adder@1.0.0", "digest": adder.digest}]}
    with pytest.raises(PermissionDeniedError, match="has not allowed `bob`"):
        bob.publish_pack(pack)  # alice's environment, public, but not bob's to sell

    runner = CliRunner()
    allowed = runner.invoke(build_app(), ["pack", "allow", "alice/adder", "bob", "--registry", hub.url], env={"ENVHUB_TOKEN": hub.tokens["alice"]})
    assert allowed.exit_code == 0, allowed.output
    assert bob.publish_pack(pack)[1]
    bob.grant("bob", "resale", "carol")

    # Made private: the permission is withdrawn, and bob's grant no longer returns the artifact.
    alice.set_visibility("alice", "adder", private=True)
    artifact = f"{hub.url}/api/v1/envs/alice/adder/1.0.0/artifact"
    denied = httpx.get(artifact, headers={"Authorization": f"Bearer {carol.token}"})
    assert denied.status_code == 404, denied.text
    with pytest.raises(EnvNotFoundError):
        pull("alice/adder", source=carol)

    # Allowed again, knowingly, while private: the lab pulls; disallowed: it does not.
    alice.allow_bundling("alice/adder", "bob")
    assert pull("alice/adder", source=carol)[2]
    alice.allow_bundling("alice/adder", "bob", allowed=False)
    assert httpx.get(artifact, headers={"Authorization": f"Bearer {carol.token}"}).status_code == 404

    events = [(e["action"], e["subject"], e["user"]) for e in alice.audit_log("alice")]
    assert ("allow", "alice/adder -> bob", "alice") in events
    assert ("disallow", "alice/adder -> bob", "alice") in events
    assert ("grant", "bob/resale -> carol", "bob") in events  # bob's grant, in alice's log
    assert ("pull", "alice/adder@1.0.0", "carol") in events
    with pytest.raises(PermissionDeniedError):
        bob.allow_bundling("alice/adder", "bob")  # only the owner allows
