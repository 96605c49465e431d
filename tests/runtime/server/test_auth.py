"""`envhub serve` behind a bearer token (issue 13): every route of both protocols asks for it.

No token and a wrong token are answered 401 `unauthenticated` in the error envelope, over envhub's
/v1 routes, OpenEnv's HTTP routes and its WebSockets (refused at the handshake); the right one
works through RemoteEnv, AsyncRemoteEnv and OpenEnv's own GenericEnvClient. Real servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from envhub.errors import AuthenticationError
from envhub.runtime.client import AsyncRemoteEnv, RemoteEnv

ROOT = Path(__file__).resolve().parents[3]
ECHO = ROOT / "tests" / "fixtures" / "echo"
TOKEN = "s3cret-token-of-the-test"
ROUTES = [("GET", "/healthz"), ("GET", "/v1/info"), ("GET", "/openapi.json"), ("POST", "/v1/sessions"),
          ("POST", "/v1/sessions/x/reset"), ("POST", "/v1/sessions/x/step"), ("DELETE", "/v1/sessions/x"),
          ("POST", "/v1/batch"), ("GET", "/health"), ("GET", "/metadata"), ("GET", "/schema"), ("POST", "/reset"),
          ("POST", "/step"), ("GET", "/state"), ("POST", "/mcp")]  # fmt: skip


@pytest.fixture
def served(serve_env, free_port):
    _, url = serve_env(ECHO, port=free_port, token=TOKEN)
    return url


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic czNjcmV0", f"Bearer {TOKEN}x"], ids=["none", "wrong", "basic", "longer"])
def test_every_route_refuses_without_the_token(served, header):
    headers = {"authorization": header} if header else {}
    with httpx.Client(base_url=served, timeout=10) as http:
        for method, path in ROUTES:
            answer = http.request(method, path, json={}, headers=headers)
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["error"]["code"] == "unauthenticated" and answer.headers["www-authenticate"] == "Bearer"


def test_websockets_refuse_without_the_token_at_the_handshake(served):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = served.replace("http://", "ws://")
    for path in ("/ws", "/mcp"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(InvalidStatus) as exc:
                connect(ws_url + path, additional_headers=headers, open_timeout=10)
            assert exc.value.response.status_code == 401
            assert b'"unauthenticated"' in exc.value.response.body
        with connect(ws_url + path, additional_headers={"Authorization": f"Bearer {TOKEN}"}, open_timeout=10) as ws:
            ws.send('{"jsonrpc": "2.0", "method": "tools/list", "id": 1}' if path == "/mcp" else '{"type": "reset", "data": {"seed": 0}}')
            assert '"error"' not in ws.recv(timeout=10)


def test_the_clients_send_the_token(served, monkeypatch):
    with pytest.raises(AuthenticationError):
        RemoteEnv(served)
    with pytest.raises(AuthenticationError):
        RemoteEnv(served, token="wrong")
    env = RemoteEnv(served, token=TOKEN)
    env.reset(seed=0)
    assert env.step("hi")[0][-1]["content"] == "hi"
    env.close()
    monkeypatch.setenv("ENVHUB_SERVE_TOKEN", TOKEN)
    env = RemoteEnv(served)  # from the variable
    env.reset()
    assert env.step("from the variable")[0][-1]["content"] == "from the variable"
    env.close()
    monkeypatch.delenv("ENVHUB_SERVE_TOKEN")

    async def main() -> list[str]:
        with pytest.raises(AuthenticationError):
            await AsyncRemoteEnv.open(served)
        envs = [await AsyncRemoteEnv.open(served, token=TOKEN, batch=batch) for batch in (True, False, True)]
        await asyncio.gather(*(e.reset(seed=0) for e in envs))
        answers = await asyncio.gather(*(e.step(f"async {i}") for i, e in enumerate(envs)))
        await asyncio.gather(*(e.close() for e in envs))
        return [obs[-1]["content"] for obs, *_ in answers]

    assert asyncio.run(main()) == ["async 0", "async 1", "async 2"]


def test_openenv_client_with_the_token(served):
    openenv = pytest.importorskip("openenv.core", reason="OpenEnv's clients: pip install 'envhub[interop]'")
    with pytest.raises(Exception):
        with openenv.GenericEnvClient(base_url=served).sync() as client:
            client.reset(seed=0)
    with openenv.GenericEnvClient(base_url=served, headers={"Authorization": f"Bearer {TOKEN}"}).sync() as client:
        client.reset(seed=0)
        result = client.step({"message": "over openenv"})
    assert result.observation["messages"][-1]["content"] == "over openenv"


def test_serve_refuses_a_non_loopback_address_without_a_token(tmp_path, free_port):
    cmd = [sys.executable, "-m", "envhub", "serve", str(ECHO), "--host", "0.0.0.0", "--port", str(free_port)]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "ENVHUB_SERVE_TOKEN": ""})
    assert refused.returncode == 1 and "without a token" in refused.stderr and "--token-file" in refused.stderr
    empty = tmp_path / "token"
    empty.write_text("\n")
    refused = subprocess.run([*cmd, "--token-file", str(empty)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "is empty" in refused.stderr
