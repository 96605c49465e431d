"""Issue 13, finding 8: a caller without access learns nothing of a private environment. Every answer
is the 404 a missing name gets, no error body carries its versions or digests, and pack listings
show outsiders only what is public."""

from __future__ import annotations

import httpx
import pytest

from envhub.errors import EnvNotFoundError
from envhub.identity.artifact import pack_bytes


def _bearer(hub, user):
    return {"Authorization": f"Bearer {hub.tokens[user]}"} if user else {}


PROBES = (
    ("GET", "/api/v1/envs/alice/secret"),
    ("GET", "/api/v1/envs/alice/secret/1.0.0/artifact"),
    ("GET", "/api/v1/envs/alice/secret/9.9.9/artifact"),
    ("GET", "/api/v1/envs/alice/secret/1.0.0/artifact.tar.gz"),
)


def _answers(hub, user):
    return [(r.status_code, r.json()) for r in (httpx.request(m, hub.url + p, headers=_bearer(hub, user)) for m, p in PROBES)]


def test_private_environment_answers_as_a_missing_one(hub, env_folder):
    missing = {user: _answers(hub, user) for user in (None, "bob")}
    assert all(status == 404 for answers in missing.values() for status, _ in answers)
    alice = hub.client("alice")
    alice.publish(env_folder(namespace="alice", name="secret"), private=True)
    for user in (None, "bob"):
        assert _answers(hub, user) == missing[user], user
    # The owner still sees it, and a missing version's 404 lists the versions only to those who may see them.
    owner = httpx.get(f"{hub.url}/api/v1/envs/alice/secret/9.9.9/artifact", headers=_bearer(hub, "alice"))
    assert owner.status_code == 404 and owner.json()["error"]["fields"]["available"] == ["1.0.0"]
    with pytest.raises(EnvNotFoundError):
        hub.client("bob").resolve("alice/secret")


def test_pack_put_does_not_leak_private_digests(hub, env_folder):
    secret, _ = hub.client("alice").publish(env_folder(namespace="alice", name="secret"), private=True)
    wrong = "sha256:" + "0" * 64
    response = httpx.put(
        f"{hub.url}/api/v1/packs/bob/stolen/1.0.0", headers=_bearer(hub, "bob"),
        json={"license": "x", "environments": [{"ref": "alice/secret@1.0.0", "digest": wrong}]},
    )
    assert response.status_code == 404, response.text
    assert secret.digest.removeprefix("sha256:") not in response.text and "1.0.0" not in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "env_not_found"


def test_pack_listings_show_outsiders_only_public_contents(hub, env_folder):
    alice = hub.client("alice")
    public, _ = alice.publish(env_folder(namespace="alice", name="adder"))
    secret, _ = alice.publish(env_folder(namespace="alice", name="secret"), private=True)
    alice.publish_pack({"namespace": "alice", "name": "suite", "version": "1.0.0", "license": "Secret terms, per lab.",
                        "environments": [{"ref": "alice/adder@1.0.0", "digest": public.digest},
                                         {"ref": "alice/secret@1.0.0", "digest": secret.digest}]})
    for user in (None, "bob"):
        for text in (
            httpx.get(f"{hub.url}/api/v1/packs/alice/suite", headers=_bearer(hub, user)).text,
            httpx.get(f"{hub.url}/api/v1/index", headers=_bearer(hub, user)).text,
            httpx.get(f"{hub.url}/registry.json").text,
            httpx.get(f"{hub.url}/").text,
        ):
            assert "alice/secret" not in text and secret.digest not in text and "Secret terms" not in text, user
        listed = httpx.get(f"{hub.url}/api/v1/packs/alice/suite", headers=_bearer(hub, user)).json()
        assert listed["versions"]["1.0.0"]["environments"] == [{"ref": "alice/adder@1.0.0", "digest": public.digest}]
    # The owner and an entitled lab see the whole pack.
    alice.grant("alice", "suite", "bob")
    for user in ("alice", "bob"):
        full = httpx.get(f"{hub.url}/api/v1/packs/alice/suite", headers=_bearer(hub, user)).json()["versions"]["1.0.0"]
        assert {e["ref"] for e in full["environments"]} == {"alice/adder@1.0.0", "alice/secret@1.0.0"}
        assert full["license"] == "Secret terms, per lab."


def test_private_upload_bytes_are_not_an_oracle_either(hub, env_folder):
    # Publishing into another's namespace is refused for the namespace, whatever exists there.
    data = pack_bytes(env_folder(namespace="alice", name="secret"))
    before = httpx.put(f"{hub.url}/api/v1/envs/alice/secret/1.0.0", content=data, headers=_bearer(hub, "bob"))
    hub.client("alice").publish_bytes(data, namespace="alice", name="secret", version="1.0.0", private=True)
    after = httpx.put(f"{hub.url}/api/v1/envs/alice/secret/1.0.0", content=data, headers=_bearer(hub, "bob"))
    assert (before.status_code, before.json()) == (after.status_code, after.json())
