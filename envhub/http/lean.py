"""A lean asyncio HTTP/1.1 client for plain-http endpoints (the local model server's case).

An evaluation's harness overhead is mostly its HTTP client: httpx spends about a millisecond of
CPU per request in its layers (httpcore, anyio, h11), more than the rest of an episode step. This
client does only what a JSON POST to a keep-alive HTTP/1.1 server needs: a pool of idle
connections, one request at a time per connection, ``Content-Length`` or chunked bodies, and a
timeout over the whole exchange. ``https`` URLs and anything unusual go through httpx instead (see
:class:`~envhub.evaluation.policies.EndpointPolicy`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

__all__ = ["LeanHTTPClient", "LeanHTTPError", "LeanResponse", "supports"]

_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+


class LeanHTTPError(OSError):
    """A connection that broke or answered something that is not HTTP/1.x."""


class LeanResponse:
    """The parts of a response that the retry logic reads (the names httpx uses)."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


def supports(url: str) -> bool:
    """Whether ``url`` can go through this client (plain http with a host)."""
    parts = urlsplit(url)
    return parts.scheme == "http" and bool(parts.hostname)


class LeanHTTPClient:
    """POSTs JSON to one ``http://host:port`` origin over pooled keep-alive connections."""

    def __init__(self, base_url: str, *, max_connections: int = 256) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the lean client speaks plain http only, not {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.host_header = parts.netloc
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def post_json(self, url: str, body: Any, *, headers: dict[str, str] | None = None, timeout: float = 120.0) -> LeanResponse:
        path = urlsplit(url).path or "/"
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host_header}", "Content-Type: application/json",
                "Accept: application/json", f"Content-Length: {len(payload)}"]  # fmt: skip
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        async with self._slots:
            if _timeout is not None:
                async with _timeout(timeout):
                    return await self._send(request)
            return await asyncio.wait_for(self._send(request), timeout)  # Python 3.10

    async def _send(self, request: bytes) -> LeanResponse:
        # A pooled connection may have been closed by the server while idle: if it fails before any
        # byte of an answer, the request is sent once more on a new connection.
        while self._idle:
            conn = self._idle.pop()
            try:
                return await self._exchange(conn, request)
            except _StaleConnection:
                conn.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            return await self._exchange(_Connection(reader, writer), request)
        except _StaleConnection as exc:
            raise LeanHTTPError(f"the server closed the connection without answering: {exc}") from None

    async def _exchange(self, conn: _Connection, request: bytes) -> LeanResponse:
        try:
            conn.writer.write(request)
            await conn.writer.drain()
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise _StaleConnection(str(exc) or type(exc).__name__) from None
        except BaseException:
            conn.close()
            raise
        try:
            response, keep = await self._read_response(conn.reader, head)
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            conn.close()
            raise LeanHTTPError(f"a broken HTTP response: {exc}") from None
        except BaseException:
            conn.close()
            raise
        if keep:
            self._idle.append(conn)
        else:
            conn.close()
        return response

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader, head: bytes) -> tuple[LeanResponse, bool]:
        lines = head.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
            raise LeanHTTPError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        status = int(status_line[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close" and status_line[0] == "HTTP/1.1"
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # the empty trailer
                    break
                chunks.append(await reader.readexactly(size + 2))
            content = b"".join(c[:-2] for c in chunks)
        elif "content-length" in headers:
            content = await reader.readexactly(int(headers["content-length"]))
        else:  # delimited by the end of the connection
            content = await reader.read()
            keep = False
        return LeanResponse(status, headers, content), keep

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()


class _StaleConnection(Exception):
    """A connection that failed before any of the answer arrived: safe to send the request again."""
