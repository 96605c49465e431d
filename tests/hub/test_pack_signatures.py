"""Issue 13, finding 6: a pulled pack must be signed by its publisher's pinned key (configured, or
pinned on first use, said out loud), unsigned or invalid packs are refused unless --allow-unsigned,
and the signed namespace, name and version must be the ones asked for, whatever a mirror serves."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from typer.testing import CliRunner

from envhub.cli import build_app
from envhub.errors import SignatureError
from envhub.registry.packs import generate_keys, pinned_keys_path, sign_pack


def cli(*args, token):
    return CliRunner().invoke(build_app(), list(args), catch_exceptions=True, env={"ENVHUB_TOKEN": token})


def _publish(hub, env_folder, name, *, key=None, envs=("adder",)):
    alice = hub.client("alice")
    items = []
    for env in envs:
        entry, _ = alice.publish(env_folder(namespace="alice", name=env))
        items.append({"ref": f"alice/{env}@1.0.0", "digest": entry.digest})
    pack = {"namespace": "alice", "name": name, "version": "1.0.0", "license": "MIT", "environments": items}
    alice.publish_pack(sign_pack(pack, key) if key else pack)


class Mirror:
    """A server in front of a hub that answers one path with another's body, as a hostile mirror would."""

    def __init__(self, upstream: str, rewrites: dict[str, str]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = rewrites.get(self.path.split("?")[0], self.path)
                got = httpx.get(upstream + path, headers={k: v for k, v in self.headers.items() if k.lower() == "authorization"})
                self.send_response(got.status_code)
                self.send_header("Content-Type", got.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(got.content)))
                self.end_headers()
                self.wfile.write(got.content)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_unsigned_packs_are_refused_unless_allowed(hub, env_folder, isolated_home):
    _publish(hub, env_folder, "plain")
    refused = cli("pack", "pull", "alice/plain", "--registry", hub.url, token=hub.tokens["bob"])
    assert isinstance(refused.exception, SignatureError) and "not signed" in str(refused.exception)
    assert not (isolated_home / "envs" / "alice").exists()
    allowed = cli("pack", "pull", "alice/plain", "--registry", hub.url, "--allow-unsigned", token=hub.tokens["bob"])
    assert allowed.exit_code == 0, allowed.output
    assert "NOT checked" in allowed.output and (isolated_home / "envs" / "alice" / "adder").is_dir()


def test_key_pinned_on_first_use_then_required(hub, hub_factory, env_folder, isolated_home, tmp_path):
    key, _, public = generate_keys(tmp_path / "alice-keys")
    _publish(hub, env_folder, "suite", key=key)
    first = cli("pack", "pull", "alice/suite", "--registry", hub.url, token=hub.tokens["bob"])
    assert first.exit_code == 0, first.output
    assert "first time" in first.output and "pinned" in first.output
    assert json.loads(pinned_keys_path().read_text()) == {"alice": public}
    again = cli("pack", "pull", "alice/suite", "--registry", hub.url, token=hub.tokens["bob"])
    assert "verified with key" in again.output and "first time" not in again.output

    # Another hub where someone else holds `alice` and signs with their own key: refused.
    other = hub_factory(tmp_path / "other-hub")
    forged, _, _ = generate_keys(tmp_path / "forger-keys")
    _publish(other, env_folder, "suite", key=forged)
    refused = cli("pack", "pull", "alice/suite", "--registry", other.url, token=other.tokens["bob"])
    assert isinstance(refused.exception, SignatureError) and "does not verify" in str(refused.exception)


def test_a_mirror_cannot_serve_another_signed_pack(hub, env_folder, isolated_home, tmp_path):
    key, _, public = generate_keys(tmp_path / "keys")
    _publish(hub, env_folder, "small", key=key)
    _publish(hub, env_folder, "large", key=key, envs=("adder", "other"))
    mirror = Mirror(hub.url, {"/api/v1/packs/alice/small": "/api/v1/packs/alice/large"})
    try:
        pulled = cli("pack", "pull", "alice/small", "--registry", mirror.url, "--public-key", public, token=hub.tokens["bob"])
    finally:
        mirror.close()
    assert isinstance(pulled.exception, SignatureError), pulled.output
    assert "served pack alice/large@1.0.0" in str(pulled.exception) and "verified" not in pulled.output
