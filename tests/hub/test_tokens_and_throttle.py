"""Issue 13, finding 7: a minted token never outlives or out-scopes its parent; failed
authentication is rate-limited (429 with Retry-After) and logged; X-Forwarded-For is believed only
from configured proxies."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from datetime import datetime

import httpx
import pytest

from envhub.errors import AuthenticationError, PermissionDeniedError
from envhub.registry.http import HubRegistry


def test_minted_tokens_never_outlive_or_outscope_their_parent(hub):
    alice = hub.client("alice")
    short = alice.create_token(scope="write", expires_in_s=2)
    child = HubRegistry(hub.url, token=short["token"]).create_token(scope="write")  # asks for no expiry
    assert child["expires_at"] is not None
    assert datetime.fromisoformat(child["expires_at"]) <= datetime.fromisoformat(short["expires_at"])
    longer = HubRegistry(hub.url, token=short["token"]).create_token(scope="read", expires_in_s=3600)
    assert datetime.fromisoformat(longer["expires_at"]) <= datetime.fromisoformat(short["expires_at"])
    read = alice.create_token(scope="read")
    with pytest.raises(PermissionDeniedError, match="read"):
        HubRegistry(hub.url, token=read["token"]).create_token(scope="write")
    time.sleep(2.2)
    for token in (child, longer):
        with pytest.raises(AuthenticationError, match="expired"):
            HubRegistry(hub.url, token=token["token"]).whoami()
    # Revoking a token revokes every token it minted, and theirs.
    parent = alice.create_token(scope="write")
    grandchild = HubRegistry(hub.url, token=HubRegistry(hub.url, token=parent["token"]).create_token(scope="write")["token"]).create_token()
    assert HubRegistry(hub.url, token=grandchild["token"]).whoami()["user"] == "alice"
    alice.revoke_token(parent["id"])
    with pytest.raises(AuthenticationError, match="which minted it, was revoked"):
        HubRegistry(hub.url, token=grandchild["token"]).whoami()


def test_failed_authentication_is_rate_limited_and_logged(hub, caplog):
    caplog.set_level(logging.WARNING, logger="envhub.hub")
    statuses = []
    with httpx.Client(base_url=hub.url) as client:
        for i in range(300):
            statuses.append(client.get("/api/v1/whoami", headers={"Authorization": f"Bearer ehub_guess{i}"}).status_code)
        limited = client.get("/api/v1/whoami", headers={"Authorization": "Bearer ehub_guess-again"})
        # Over the limit, a valid token waits too: the answer says nothing about the guess.
        valid = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {hub.tokens['alice']}"})
        anonymous = client.get("/api/v1/whoami")
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    for response in (limited, valid):
        assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert anonymous.status_code == 200
    denials = [r for r in caplog.records if r.name == "envhub.hub" and "denied" in r.getMessage()]
    assert len(denials) >= 300 and "127.0.0.1" in denials[0].getMessage()


def _adduser(data, name="alice"):
    made = subprocess.run([sys.executable, "-c", "from envhub.cli import main; main()", "hub", "adduser", name, "--data", str(data)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def _pull_client(hub, token, env_folder):
    from envhub.identity.artifact import pack_bytes

    data = pack_bytes(env_folder(namespace="alice", name="adder"))
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.put(f"{hub.url}/api/v1/envs/alice/adder/1.0.0", content=data, headers=auth).status_code == 201
    httpx.get(f"{hub.url}/api/v1/envs/alice/adder/1.0.0/artifact", headers={"X-Forwarded-For": "203.0.113.9"})
    events = httpx.get(f"{hub.url}/api/v1/audit", params={"namespace": "alice"}, headers=auth).json()["events"]
    return next(e["client"] for e in events if e["action"] == "pull")


def test_forwarded_for_only_from_configured_proxies(tmp_path, isolated_home, env_folder, hub_process):
    data = tmp_path / "plain"
    token = _adduser(data)
    plain = hub_process(data)
    plain.start()
    assert _pull_client(plain, token, env_folder) == "127.0.0.1"  # a loopback client is no proxy by default
    plain.kill()

    data = tmp_path / "proxied"
    token = _adduser(data)
    proxied = hub_process(data, "--trusted-proxy", "127.0.0.1")
    proxied.start()
    assert _pull_client(proxied, token, env_folder) == "203.0.113.9"
