"""The hub server over real HTTP: publishing, pulling, tokens, namespaces, private environments,
entitlements, the audit log, the front page, and the faults the issue lists."""

from __future__ import annotations

import gzip
import json
import io
import tarfile
import time

import httpx
import pytest
from typer.testing import CliRunner

from envhub.identity.artifact import pack_bytes, sha256_digest
from envhub.cli import build_app
from envhub.errors import (
    ArtifactError,
    AuthenticationError,
    DigestMismatchError,
    EnvNotFoundError,
    ManifestError,
    PayloadTooLargeError,
    PermissionDeniedError,
    VersionConflictError,
)
from envhub.runtime.make import pull
from envhub.registry.local import LocalRegistry

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(build_app(), list(args), catch_exceptions=True)


def tarball(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue(), compresslevel=1)


def file_entry(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


MANIFEST = b'namespace = "alice"\nname = "evil"\nversion = "1.0.0"\nentrypoint = "m:f"\n'


# --- publish and pull --------------------------------------------------------------------------


def test_publish_pull_roundtrip_and_immutability(hub, env_folder):
    alice = hub.client("alice")
    folder = env_folder(namespace="alice", name="adder")
    entry, created = alice.publish(folder)
    assert created and entry.digest == sha256_digest(pack_bytes(folder))
    assert alice.publish(folder) == (entry, False)  # the same content again: a no-op
    with pytest.raises(VersionConflictError) as conflict:
        alice.publish(env_folder(namespace="alice", name="adder", extra="different"))
    assert conflict.value.existing == entry.digest

    # Anyone pulls a public environment, by range, into their local registry; the digest is checked.
    env_entry, version, created = pull("alice/adder@^1", source=hub.client())
    assert created and version.digest == entry.digest
    assert (LocalRegistry().folder(env_entry, version) / "envhub.toml").is_file()
    assert "alice/adder" in hub.client().index().environments


def test_cli_publish_login_pull_search(hub, env_folder, isolated_home):
    folder = env_folder(namespace="alice", name="adder")
    assert isinstance(cli("publish", str(folder), "--registry", hub.url).exception, AuthenticationError)
    login = cli("login", hub.url, "--token", hub.tokens["alice"])
    assert login.exit_code == 0 and "as alice" in login.output
    assert oct((isolated_home / "credentials.json").stat().st_mode & 0o777) == "0o600"
    published = cli("publish", str(folder), "--registry", hub.url)
    assert published.exit_code == 0, published.output
    pulled = cli("pull", "alice/adder@1.0.0", "--registry", hub.url)
    assert pulled.exit_code == 0, pulled.output
    assert "alice/adder" in cli("search", "arithmetic", "--registry", hub.url).output
    assert "alice/adder@1.0.0" in cli("versions", "alice/adder", "--registry", hub.url).output
    assert cli("login", hub.url, "--token", "ehub_wrong").exception is not None


def test_not_found_suggests(hub, env_folder):
    hub.client("alice").publish(env_folder(namespace="alice", name="adder"))
    with pytest.raises(EnvNotFoundError) as info:
        hub.client().resolve("alice/addr")
    assert "alice/adder" in str(info.value)
    response = httpx.get(f"{hub.url}/api/v1/envs/alice/addr")
    assert response.status_code == 404 and response.json()["error"]["code"] == "env_not_found"


# --- tokens and namespaces ---------------------------------------------------------------------


def test_tokens_scopes_expiry_revocation(hub, env_folder):
    folder = env_folder(namespace="alice", name="adder")
    with pytest.raises(AuthenticationError):
        hub.client().publish(folder)
    with pytest.raises(PermissionDeniedError, match="belongs to someone else"):
        hub.client("bob").publish(folder)  # a token of another namespace
    alice = hub.client("alice")
    read = alice.create_token(scope="read")
    from envhub.registry.http import HubRegistry

    with pytest.raises(PermissionDeniedError, match="read"):
        HubRegistry(hub.url, token=read["token"]).publish(folder)
    short = alice.create_token(scope="write", expires_in_s=1)
    assert HubRegistry(hub.url, token=short["token"]).whoami()["user"] == "alice"
    time.sleep(1.2)
    with pytest.raises(AuthenticationError, match="expired"):
        HubRegistry(hub.url, token=short["token"]).publish(folder)
    revocable = alice.create_token(scope="write")
    alice.revoke_token(revocable["id"])
    with pytest.raises(AuthenticationError, match="revoked"):
        HubRegistry(hub.url, token=revocable["token"]).publish(folder)
    with pytest.raises(AuthenticationError, match="not known"):
        HubRegistry(hub.url, token="ehub_made-up").whoami()
    # Tokens are stored hashed: the database never holds the value.
    from envhub.hub.models import Token
    from sqlalchemy import select

    with hub.hub.sessions() as s:
        stored = [t.token_hash for t in s.scalars(select(Token))]
    assert revocable["token"] not in stored and len(stored[0]) == 64


def test_organisation_namespace(hub, env_folder):
    alice = hub.client("alice")
    alice.json("POST", "/orgs", json={"name": "acme-lab"})
    folder = env_folder(namespace="acme-lab", name="adder")
    assert alice.publish(folder)[1]
    with pytest.raises(PermissionDeniedError):
        hub.client("bob").publish(env_folder(namespace="acme-lab", name="adder", version="1.1.0"))
    alice.json("POST", "/orgs/acme-lab/members", json={"user": "bob"})
    assert hub.client("bob").publish(env_folder(namespace="acme-lab", name="adder", version="1.1.0"))[1]


# --- private environments, packs, entitlements, audit ------------------------------------------


def test_private_environment_entitlements_and_audit(hub, env_folder):
    alice, bob = hub.client("alice"), hub.client("bob")
    entry, _ = alice.publish(env_folder(namespace="alice", name="secret"), private=True)
    assert "alice/secret" not in hub.client().index().environments
    with pytest.raises(EnvNotFoundError):  # without access: the 404 of a missing name (finding 8)
        pull("alice/secret", source=hub.client())
    with pytest.raises(EnvNotFoundError):
        pull("alice/secret", source=bob)

    pack = {"namespace": "alice", "name": "suite", "version": "1.0.0", "license": "Commercial, per lab.",
            "environments": [{"ref": "alice/secret@1.0.0", "digest": entry.digest}]}
    assert alice.publish_pack(pack)[1]
    with pytest.raises(EnvNotFoundError):
        pull("alice/secret", source=bob)
    raw = httpx.get(f"{hub.url}/api/v1/envs/alice/secret/1.0.0/artifact", headers={"Authorization": f"Bearer {hub.tokens['bob']}"})
    assert raw.status_code == 404 and raw.json()["error"]["code"] == "env_not_found"

    alice.grant("alice", "suite", "bob")
    _, version, created = pull("alice/secret@^1", source=bob)
    assert created and version.digest == entry.digest
    assert "alice/secret" in bob.index().environments

    events = alice.audit_log("alice")
    pulls = [e for e in events if e["action"] == "pull"]
    assert pulls and pulls[0]["user"] == "bob" and pulls[0]["subject"] == "alice/secret@1.0.0"
    assert {e["action"] for e in events} >= {"publish", "pack", "grant", "pull"}
    with pytest.raises(PermissionDeniedError):
        bob.audit_log("alice")

    alice.revoke("alice", "suite", "bob")
    with pytest.raises(EnvNotFoundError):
        bob.resolve("alice/secret")
    # Another user cannot sell alice's private environment in a pack of their own.
    bob_pack = {**pack, "namespace": "bob", "name": "stolen"}
    with pytest.raises(EnvNotFoundError):
        bob.publish_pack(bob_pack)


def test_audit_log_cli(hub, env_folder, isolated_home):
    hub.client("alice").publish(env_folder(namespace="alice", name="adder"))
    pull("alice/adder", source=hub.client("bob"))
    out = cli("audit-log", "alice", "--registry", hub.url, "--json")
    assert out.exit_code != 0 or "bob" not in out.output  # no token stored yet: refused
    cli("login", hub.url, "--token", hub.tokens["alice"])
    out = cli("audit-log", "alice", "--registry", hub.url, "--json")
    assert out.exit_code == 0, out.output
    assert '"user": "bob"' in out.output and '"action": "pull"' in out.output


# --- bad uploads -------------------------------------------------------------------------------


def _upload(hub, data: bytes, *, name="evil", version="1.0.0"):
    return hub.client("alice").publish_bytes(data, namespace="alice", name=name, version=version)


def special_entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


UNSAFE = {
    "tar-slip": ([file_entry("../escape.txt", b"x")], "'..'"),
    "absolute": ([file_entry("/etc/evil", b"x")], "absolute"),
    "symlink": ([special_entry("link", tarfile.SYMTYPE, "/etc/passwd")], "links"),
    "hardlink": ([special_entry("hard", tarfile.LNKTYPE, "envhub.toml")], "links"),
    "device": ([special_entry("dev", tarfile.CHRTYPE)], "plain files"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_refused(hub, case):
    entries, message = UNSAFE[case]
    with pytest.raises(ArtifactError, match=message):
        _upload(hub, tarball([file_entry("envhub.toml", MANIFEST), *entries]))
    assert "alice/evil" not in hub.client().index().environments


def test_gzip_bomb_refused(hub):
    # 64 MiB of zeros compress to ~64 KiB; the hub unpacks at most 8 MiB.
    bomb = tarball([file_entry("envhub.toml", MANIFEST), file_entry("zeros.bin", bytes(64 << 20))])
    assert len(bomb) < 1 << 20
    with pytest.raises(ArtifactError, match="expands past"):
        _upload(hub, bomb)


def test_lying_manifest_refused(hub, env_folder):
    data = pack_bytes(env_folder(namespace="alice", name="adder", version="1.0.0"))
    with pytest.raises(ManifestError, match="published as 'other'"):
        hub.client("alice").publish_bytes(data, namespace="alice", name="other", version="1.0.0")
    with pytest.raises(ManifestError, match="`version` is '1.0.0'"):
        hub.client("alice").publish_bytes(data, namespace="alice", name="adder", version="2.0.0")


def test_wrong_digest_refused(hub, env_folder):
    data = pack_bytes(env_folder(namespace="alice", name="adder"))
    response = httpx.put(
        f"{hub.url}/api/v1/envs/alice/adder/1.0.0", content=data,
        headers={"Authorization": f"Bearer {hub.tokens['alice']}", "X-Envhub-Digest": "sha256:" + "0" * 64},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "digest_mismatch"


def test_client_refuses_artifact_with_wrong_digest(hub, env_folder, monkeypatch):
    entry, _ = hub.client("alice").publish(env_folder(namespace="alice", name="adder"))
    # Corrupt the stored blob behind the server's back: the server notices and refuses to serve it.
    from envhub.hub.storage import artifact_key

    hub.hub.storage.put(artifact_key(entry.digest), b"corrupted")
    with pytest.raises(DigestMismatchError):
        pull("alice/adder", source=hub.client())
    assert not (LocalRegistry().home / "envs" / "alice").exists()


def test_oversize_upload_413(hub):
    big = b"\0" * (21 << 20)
    response = httpx.put(f"{hub.url}/api/v1/envs/alice/big/1.0.0", content=big, headers={"Authorization": f"Bearer {hub.tokens['alice']}"})
    assert response.status_code == 413
    with pytest.raises(PayloadTooLargeError):
        hub.client("alice").publish_bytes(big, namespace="alice", name="big", version="1.0.0")


# --- races and crashes -------------------------------------------------------------------------


def test_concurrent_publishes_exactly_one_wins(hub, env_folder):
    blobs = [pack_bytes(env_folder(namespace="alice", name="race", extra=f"variant {i}")) for i in range(6)]
    results = hub.race("alice", blobs, name="race")
    winners = [r for r in results if isinstance(r, tuple) and r[1]]
    losers = [r for r in results if isinstance(r, VersionConflictError)]
    assert len(winners) == 1 and len(losers) == len(blobs) - 1, results
    assert hub.client().resolve("alice/race@1.0.0")[1].digest == winners[0][0].digest


def test_concurrent_identical_publishes_one_creates(hub, env_folder):
    data = pack_bytes(env_folder(namespace="alice", name="same"))
    results = hub.race("alice", [data] * 4, name="same")
    assert sorted(r[1] for r in results) == [False, False, False, True], results


# --- the page ----------------------------------------------------------------------------------


def test_front_page_lists_public_envs_and_packs(hub, env_folder):
    alice = hub.client("alice")
    public, _ = alice.publish(env_folder(namespace="alice", name="adder"))
    alice.publish(env_folder(namespace="alice", name="secret"), private=True)
    alice.publish_pack({"namespace": "alice", "name": "starter", "version": "1.0.0", "license": "MIT",
                        "environments": [{"ref": "alice/adder@1.0.0", "digest": public.digest}]})
    page = httpx.get(hub.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert html.startswith("<!doctype html>") and "alice/adder" in html and "alice/starter" in html
    assert "alice/secret" not in html
    assert httpx.get(hub.url + "/openapi.json").json()["info"]["title"] == "envhub hub"


def test_visibility_changes(hub, env_folder):
    alice = hub.client("alice")
    alice.publish(env_folder(namespace="alice", name="adder"))
    assert "alice/adder" in hub.client().index().environments
    alice.publish(env_folder(namespace="alice", name="adder", version="1.1.0"), private=True)  # hides it
    assert "alice/adder" not in hub.client().index().environments
    with pytest.raises(PermissionDeniedError):
        hub.client("bob").set_visibility("alice", "adder", private=False)
    assert alice.set_visibility("alice", "adder", private=False).private is False
    assert set(hub.client().resolve("alice/adder")[0].versions) == {"1.0.0", "1.1.0"}


def test_cli_tokens_visibility_logout(hub, env_folder, isolated_home):
    assert cli("login", hub.url, "--token", hub.tokens["alice"], "--default").exit_code == 0
    created = cli("hub", "token", "create", "--scope", "read", "--expires-in", "3600", "--name", "ci")
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert token.startswith("ehub_")
    listed = cli("hub", "token", "list")
    rows = [json.loads(line) for line in listed.output.splitlines()]
    ci = next(r for r in rows if r["name"] == "ci")
    assert ci["scope"] == "read" and ci["expires_at"] and "token" not in ci
    assert cli("hub", "token", "revoke", str(ci["id"])).exit_code == 0
    from envhub.registry.http import HubRegistry

    with pytest.raises(AuthenticationError, match="revoked"):
        HubRegistry(hub.url, token=token).whoami()

    assert cli("publish", str(env_folder(namespace="alice", name="adder"))).exit_code == 0
    assert cli("visibility", "alice/adder", "private").exit_code == 0
    assert "alice/adder" not in hub.client().index().environments
    assert cli("visibility", "alice/adder", "public").exit_code == 0
    assert "alice/adder" in hub.client().index().environments

    assert "token removed" in cli("logout", hub.url).output
    assert isinstance(cli("visibility", "alice/adder", "private").exception, AuthenticationError)
