"""Packs signed with ed25519 through the CLI, and static registries served over HTTP."""

from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from envhub.cli import build_app
from envhub.errors import DigestMismatchError, SignatureError
from envhub.runtime.make import pull
from envhub.registry.config import open_registry
from envhub.registry.http import HubRegistry, StaticHttpRegistry
from envhub.registry.local import LocalRegistry

runner = CliRunner()


def cli(*args: str, env: dict | None = None):
    return runner.invoke(build_app(), list(args), catch_exceptions=True, env=env)


def test_signed_pack_flow(hub, env_folder, isolated_home, tmp_path, monkeypatch):
    alice = hub.client("alice")
    alice.publish(env_folder(namespace="alice", name="algebra"), private=True)
    alice.publish(env_folder(namespace="alice", name="geometry", version="2.1.0"), private=True)
    cli("login", hub.url, "--token", hub.tokens["alice"], "--default")

    keys = cli("pack-keys", "--out", str(tmp_path / "keys"))
    assert keys.exit_code == 0, keys.output
    public = (tmp_path / "keys" / "pack-signing.pub").read_text().strip()
    assert oct((tmp_path / "keys" / "pack-signing.pem").stat().st_mode & 0o777) == "0o600"

    pack_file = tmp_path / "suite.pack.json"
    made = cli("pack", "create", "alice/suite@1.0.0", "-e", "alice/algebra@^1", "-e", "alice/geometry",
               "--license", "Licensed to one lab for training.", "--out", str(pack_file))
    assert made.exit_code == 0, made.output
    pack = json.loads(pack_file.read_text())
    assert [e["ref"] for e in pack["environments"]] == ["alice/algebra@1.0.0", "alice/geometry@2.1.0"]
    assert cli("sign", str(pack_file), "--key", str(tmp_path / "keys" / "pack-signing.pem")).exit_code == 0
    assert json.loads(pack_file.read_text())["signature"]
    published = cli("pack", "publish", str(pack_file))
    assert published.exit_code == 0 and "(signed)" in published.output
    assert cli("pack", "grant", "alice/suite", "bob").exit_code == 0

    # The lab pulls the whole pack, verifying the signature with the seller's public key.
    monkeypatch.setenv("ENVHUB_TOKEN", hub.tokens["bob"])
    monkeypatch.setenv("ENVHUB_PACK_PUBLIC_KEY", public)
    pulled = cli("pack", "pull", "alice/suite")
    assert pulled.exit_code == 0, pulled.output
    assert "signature of alice/suite@1.0.0 verified" in pulled.output
    installed = LocalRegistry().index().environments
    assert "alice/algebra" in installed and "alice/geometry" in installed

    # Another key does not verify it.
    other = cli("pack-keys", "--out", str(tmp_path / "other"))
    assert other.exit_code == 0
    monkeypatch.setenv("ENVHUB_PACK_PUBLIC_KEY", (tmp_path / "other" / "pack-signing.pub").read_text().strip())
    assert isinstance(cli("pack", "pull", "alice/suite").exception, SignatureError)

    monkeypatch.delenv("ENVHUB_TOKEN")
    assert cli("pack", "revoke", "alice/suite", "bob").exit_code == 0


def test_signature_covers_the_digests(tmp_path):
    from envhub.registry.packs import generate_keys, sign_pack, verify_pack

    private, _, public = generate_keys(tmp_path)
    pack = {"namespace": "a", "name": "p", "version": "1.0.0", "license": "MIT",
            "environments": [{"ref": "a/e@1.0.0", "digest": "sha256:" + "1" * 64}]}
    signed = sign_pack(pack, private)
    verify_pack(signed, public)
    tampered = {**signed, "environments": [{"ref": "a/e@1.0.0", "digest": "sha256:" + "2" * 64}]}
    with pytest.raises(SignatureError, match="does not verify"):
        verify_pack(tampered, public)
    with pytest.raises(SignatureError, match="not signed"):
        verify_pack(pack, public)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def static_server(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_static_registry_over_http(static_server, env_folder, isolated_home, tmp_path, monkeypatch):
    site, url = static_server
    LocalRegistry().publish(env_folder(namespace="acme", name="adder"))
    LocalRegistry().publish(env_folder(namespace="acme", name="adder", version="1.1.0"))
    assert cli("export-static", str(site)).exit_code == 0

    monkeypatch.setenv("ENVHUB_HOME", str(tmp_path / "lab-home"))
    registry = open_registry(url)
    assert isinstance(registry, StaticHttpRegistry)
    pulled = cli("pull", "acme/adder@~1.0", "--registry", url)
    assert pulled.exit_code == 0, pulled.output
    assert (tmp_path / "lab-home" / "envs" / "acme" / "adder" / "1.0.0").is_dir()

    # A served artifact that is not what the index says is refused before anything is unpacked.
    index = json.loads((site / "registry.json").read_text())
    artifact = index["environments"]["acme/adder"]["versions"]["1.1.0"]["artifact"]
    (site / artifact).write_bytes(b"not the published bytes")
    with pytest.raises(DigestMismatchError):
        pull("acme/adder@1.1.0", source=StaticHttpRegistry(url))
    assert not (tmp_path / "lab-home" / "envs" / "acme" / "adder" / "1.1.0").exists()


def test_hub_index_doubles_as_static_registry(hub, env_folder, isolated_home):
    hub.client("alice").publish(env_folder(namespace="alice", name="adder"))
    assert isinstance(open_registry(hub.url), HubRegistry)
    static = open_registry("static+" + hub.url)
    assert isinstance(static, StaticHttpRegistry)
    _, version, created = pull("alice/adder", source=static)
    assert created and version.version == "1.0.0"
