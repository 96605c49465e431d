"""envhub's HTTP/1.1 client against real servers: uvicorn for the HTTP it must speak (keep-alive
reuse, chunked bodies, closes, lines streamed as they come), and small asyncio servers on
127.0.0.1 or a Unix socket for exact bytes and the ways a server misbehaves (closing an idle
connection, answering garbage, never answering)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from envhub.errors import EnvhubError, TransportError
from envhub.evaluation.local_model import Sampling
from envhub.evaluation.model_server.scripted import serve_in_thread
from envhub.evaluation.policies import EndpointPolicy
from envhub.http import transport
from envhub.http.transport import Connection, ConnectionPool, Origin, supports


async def echo(request):
    return JSONResponse({"got": await request.json(), "auth": request.headers.get("authorization")})


async def chunked(request):
    async def pieces():
        for part in (b'{"a": ', b"[1, 2, ", b"3]}"):
            yield part

    return StreamingResponse(pieces(), media_type="application/json")


async def lines(request):
    async def pieces():  # lines cut across chunks, the last without its newline
        for part in (b'{"i": 0}\n{"i"', b": 1}\n", b'{"i": 2}\n{"i": 3}'):
            await asyncio.sleep(0.01)
            yield part

    return StreamingResponse(pieces(), media_type="application/x-ndjson")


async def refused(request):
    return JSONResponse({"error": {"code": "busy"}}, status_code=503)


async def closing(request):
    return Response(b'{"closed": true}', media_type="application/json", headers={"Connection": "close"})


async def empty(request):
    return Response(status_code=204)


ROUTES = {"/echo": echo, "/chunked": chunked, "/lines": lines, "/refused": refused, "/close": closing, "/empty": empty}
APP = Starlette(routes=[Route(p, f, methods=["POST", "DELETE"]) for p, f in ROUTES.items()])


def test_origins():
    assert supports("http://127.0.0.1:8000/v1") and supports("https://example.org/v1")
    assert supports("http://envhub.local", uds="/tmp/x.sock") and not supports("ftp://example.org")
    assert Origin.from_url("http://127.0.0.1:8000/v1").describe() == "http://127.0.0.1:8000"
    assert Origin.from_url("http://envhub.local", uds="/tmp/x.sock").describe() == "unix:/tmp/x.sock"
    secure = Origin.from_url("https://example.org/v1")
    assert secure.tls and secure.port == 443 and secure.describe() == "https://example.org"
    with pytest.raises(ValueError, match="http, https or a Unix socket"):
        Origin.from_url("127.0.0.1:8000")


async def post(pool: ConnectionPool, path: str, body: bytes = b"{}", **options) -> transport.Response:
    async with pool.connection() as conn:
        return await conn.request("POST", path, body, **options)


def test_the_pool_speaks_enough_http():
    async def main(url):
        pool = ConnectionPool.for_url(url, max_connections=4)
        first = await post(pool, "/echo", b'{"x": "\xc3\xa9"}', headers={"Authorization": "Bearer k"})
        assert first.status_code == 200 and first.json() == {"got": {"x": "é"}, "auth": "Bearer k"}
        results = await asyncio.gather(*(post(pool, "/echo", json.dumps({"i": i}).encode()) for i in range(20)))
        assert [r.json()["got"]["i"] for r in results] == list(range(20))
        assert 1 <= pool.idle <= 4  # connections are pooled and reused, never more than four
        assert (await post(pool, "/chunked")).json() == {"a": [1, 2, 3]}
        idle = pool.idle
        assert (await post(pool, "/close")).json() == {"closed": True}
        assert pool.idle == idle - 1  # the server closed that one: not kept
        async with pool.connection() as conn:
            gone = await conn.request("DELETE", "/empty")
        assert gone.status_code == 204 and gone.content == b"" and pool.idle == idle - 1  # no body, kept alive
        missing = await post(pool, "/nope")
        assert missing.status_code in (404, 405)
        with pytest.raises(ValueError, match="line break"):
            await post(pool, "/echo", headers={"x-evil": "a\r\nhost: elsewhere"})
        await pool.aclose()
        assert pool.idle == 0

    with serve_in_thread(APP) as base:
        asyncio.run(main(base.removesuffix("/v1")))


def test_lines_stream_as_they_arrive():
    async def main(url):
        conn = Connection(Origin.from_url(url))
        got: list[bytes] = []
        response = await conn.stream_lines("POST", "/lines", b"{}", got.append)
        assert response.status_code == 200 and response.content == b""
        assert [json.loads(line) for line in got] == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
        assert conn.is_open  # a chunked answer read to its end leaves the connection reusable
        # Any other answer is read whole, and no line is handed over.
        refusal = await conn.stream_lines("POST", "/refused", b"{}", got.append)
        assert refusal.status_code == 503 and refusal.json() == {"error": {"code": "busy"}} and len(got) == 4
        # An error in the callback closes the connection and comes out as it is.
        with pytest.raises(ZeroDivisionError):
            await conn.stream_lines("POST", "/lines", b"{}", lambda line: 1 / 0)
        assert not conn.is_open
        assert (await conn.request("POST", "/echo", b'{"n": 1}')).json()["got"] == {"n": 1}  # reopened
        conn.close()

    with serve_in_thread(APP) as base:
        asyncio.run(main(base.removesuffix("/v1")))


class RawServer:
    """An asyncio server on 127.0.0.1 (or a Unix socket) that answers each connection's requests with
    ``answer`` (bytes, or None for never), closing the connection after ``per_connection`` answers."""

    def __init__(self, answer: bytes | None, *, per_connection: int = 1) -> None:
        self.answer = answer
        self.per_connection = per_connection
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for _ in range(self.per_connection):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
                await reader.readexactly(length)
                self.requests += 1
                if self.answer is None:
                    await asyncio.sleep(3600)
                writer.write(self.answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def serving(self, uds: Path | None = None):
        """Yields the url to give :meth:`Origin.from_url` (with ``uds``, when given)."""
        if uds is not None:
            async with await asyncio.start_unix_server(self.handle, str(uds)):
                yield "http://envhub.local"
            return
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        async with server:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{\"ok\": true}"


def test_a_connection_the_server_closed_while_idle_is_reopened_once():
    async def main():
        raw = RawServer(OK, per_connection=1)  # answers, then closes without saying so
        async with raw.serving() as url:
            conn = Connection(Origin.from_url(url))
            for _ in range(3):
                assert (await conn.request("POST", "/", b"{}", timeout=5)).json() == {"ok": True}
                await asyncio.sleep(0.05)  # the close reaches this side
            conn.close()
        assert raw.requests == 3 and raw.connections == 3

    asyncio.run(main())


def test_a_unix_socket_with_a_chunked_answer(tmp_path):
    sock = tmp_path / "s.sock"
    answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\n{\"i\":0}\r\n3;x=y\r\n\n{\"\r\n6\r\ni\":1}\n\r\n0\r\nx-trailer: 1\r\n\r\n"

    async def main():
        raw = RawServer(answer, per_connection=2)
        async with raw.serving(uds=sock) as url:
            conn = Connection(Origin.from_url(url, uds=str(sock)))
            got: list[bytes] = []
            await conn.stream_lines("POST", "/v1/batch", b"{}", got.append)
            assert got == [b'{"i":0}', b'{"i":1}']  # a chunk extension and a trailer field, skipped
            assert (await conn.request("POST", "/v1/batch", b"{}")).content == b'{"i":0}\n{"i":1}\n'
            conn.close()
        assert raw.connections == 1 and raw.requests == 2

    asyncio.run(main())


def test_failures_are_transport_errors_and_timeouts_close_the_connection():
    assert issubclass(TransportError, EnvhubError) and issubclass(TransportError, OSError)

    async def main():
        garbage = RawServer(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        async with garbage.serving() as url:
            with pytest.raises(TransportError, match="not an HTTP/1.x response"):
                await Connection(Origin.from_url(url)).request("POST", "/", b"{}", timeout=5)
        cut = RawServer(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"ok\"")
        async with cut.serving() as url:
            with pytest.raises(TransportError, match="broke off"):
                await Connection(Origin.from_url(url)).request("POST", "/", b"{}", timeout=5)
        silent = RawServer(None)
        async with silent.serving() as url:
            conn = Connection(Origin.from_url(url))
            with pytest.raises(TimeoutError):
                await conn.request("POST", "/", b"{}", timeout=0.2)
            assert not conn.is_open
        # The server is gone: a new connection is refused.
        with pytest.raises(TransportError, match="cannot connect") as exc:
            await Connection(Origin.from_url(url)).request("POST", "/", b"{}", timeout=5)
        assert exc.value.where == url

    asyncio.run(main())


def test_the_pool_fails_cleanly_when_the_server_is_gone():
    async def main():
        with serve_in_thread(APP) as base:
            url = base.removesuffix("/v1")
            pool = ConnectionPool.for_url(url)
            assert (await post(pool, "/echo", b'{"n": 1}', timeout=5)).status_code == 200
        # the server is gone: the pooled connection is stale, and a new one is refused
        with pytest.raises(TransportError, match="cannot connect"):
            await post(pool, "/echo", b'{"n": 1}', timeout=5)
        assert pool.idle == 0
        await pool.aclose()

    asyncio.run(main())


@pytest.fixture
def self_signed(tmp_path, monkeypatch) -> tuple[str, str]:
    """A certificate for 127.0.0.1, trusted through SSL_CERT_FILE as a user would trust their CA."""
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return str(cert), str(key)


def test_https_endpoints_sync_and_async(self_signed, monkeypatch):
    from envhub.evaluation.model_server.scripted import ScriptedEndpoint
    from envhub.http.chat import RetryPolicy, chat_sync

    server = ScriptedEndpoint(lambda messages: "hello")

    async def main(url):
        policy = EndpointPolicy(url, "scripted", sampling=Sampling(0.0, 1.0, 8), api_key="k")
        completion = await policy.complete([{"role": "user", "content": "hi"}], seed=3)
        assert completion.text == "hello" and completion.finish_reason == "stop"
        await policy.aclose()

    with serve_in_thread(server.app, tls=self_signed) as url:
        assert url.startswith("https://")
        asyncio.run(main(url))
        pool = ConnectionPool.for_url(url)  # the blocking path, as a judge inside a rubric calls it
        assert chat_sync(pool, url, {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}).text == "hello"
        transport.run_blocking(pool.aclose())
        # a certificate nobody vouches for is refused, and not retried into success
        monkeypatch.delenv("SSL_CERT_FILE")
        pool = ConnectionPool.for_url(url)
        with pytest.raises(EnvhubError, match="CERTIFICATE_VERIFY_FAILED"):
            chat_sync(pool, url, {"model": "scripted", "messages": []}, retry=RetryPolicy(max_retries=0))
    assert server.requests[0]["seed"] == 3 and len(server.requests) == 2  # the refused one never arrived


def test_blocking_calls_run_on_one_io_thread_and_refuse_to_run_on_it():
    async def main(url):
        pool = ConnectionPool.for_url(url)
        # blocking from inside the I/O thread would deadlock: refused with the way out
        with pytest.raises(RuntimeError, match="await the coroutine instead"):
            transport.run_blocking(pool.request("POST", "/echo", b"{}"))
        return "ok"

    with serve_in_thread(APP) as base:
        url = base.removesuffix("/v1")
        pool = ConnectionPool.for_url(url)
        answers = [transport.run_blocking(pool.request("POST", "/echo", b'{"n": %d}' % i, timeout=5)) for i in range(3)]
        assert [a.json()["got"] for a in answers] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert pool.idle == 1  # one keep-alive connection served all three
        assert transport.run_blocking(main(url)) == "ok"
        transport.run_blocking(pool.aclose())
