"""The lean HTTP client against a real uvicorn server: keep-alive reuse, chunked bodies, closes."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from envhub.http.lean import LeanHTTPClient, LeanHTTPError, supports
from envhub.evaluation.local_model import Sampling
from envhub.evaluation.policies import EndpointPolicy
from envhub.evaluation.model_server.scripted import serve_in_thread


async def echo(request):
    return JSONResponse({"got": await request.json(), "auth": request.headers.get("authorization")})


async def chunked(request):
    async def pieces():
        for part in (b'{"a": ', b"[1, 2, ", b"3]}"):
            yield part

    return StreamingResponse(pieces(), media_type="application/json")


async def closing(request):
    return Response(b'{"closed": true}', media_type="application/json", headers={"Connection": "close"})


APP = Starlette(routes=[Route(p, f, methods=["POST"]) for p, f in (("/echo", echo), ("/chunked", chunked), ("/close", closing))])


def test_lean_client_speaks_enough_http():
    assert supports("http://127.0.0.1:8000/v1") and not supports("https://example.org/v1")

    async def main(url):
        client = LeanHTTPClient(url, max_connections=4)
        first = await client.post_json(url + "/echo", {"x": "é"}, headers={"Authorization": "Bearer k"})
        assert first.status_code == 200 and first.json() == {"got": {"x": "é"}, "auth": "Bearer k"}
        results = await asyncio.gather(*(client.post_json(url + "/echo", {"i": i}) for i in range(20)))
        assert [r.json()["got"]["i"] for r in results] == list(range(20))
        assert 1 <= len(client._idle) <= 4  # connections are pooled and reused
        assert (await client.post_json(url + "/chunked", {})).json() == {"a": [1, 2, 3]}
        assert (await client.post_json(url + "/close", {})).json() == {"closed": True}
        missing = await client.post_json(url + "/nope", {})
        assert missing.status_code in (404, 405)
        await client.aclose()

    with serve_in_thread(APP) as base:
        asyncio.run(main(base.removesuffix("/v1")))


def test_lean_client_fails_cleanly_when_the_server_is_gone():
    async def call(client, url):
        return await client.post_json(url + "/echo", {"n": 1}, timeout=5)

    async def main():
        with serve_in_thread(APP) as base:
            url = base.removesuffix("/v1")
            client = LeanHTTPClient(url)
            assert (await call(client, url)).status_code == 200
        # the server is gone: the pooled connection is stale, and a new one is refused
        with pytest.raises(OSError):
            await call(client, url)
        await client.aclose()

    asyncio.run(main())


def test_endpoint_policy_over_httpx_too(tmp_path):
    from envhub.evaluation.model_server.scripted import ScriptedEndpoint

    server = ScriptedEndpoint(lambda messages: "hello")

    async def main(url):
        for lean in (True, False):
            policy = EndpointPolicy(url, "scripted", sampling=Sampling(0.0, 1.0, 8), lean_http=lean, api_key="k")
            completion = await policy.complete([{"role": "user", "content": "hi"}], seed=3)
            assert completion.text == "hello" and completion.finish_reason == "stop"
            await policy.aclose()

    with serve_in_thread(server.app) as url:
        asyncio.run(main(url))
    assert [r["seed"] for r in server.requests] == [3, 3]
    assert all(json.dumps(r["messages"]) == '[{"role": "user", "content": "hi"}]' for r in server.requests)


def test_lean_http_error_is_an_oserror():
    assert issubclass(LeanHTTPError, OSError)
