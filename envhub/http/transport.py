"""envhub's one HTTP/1.1 client, on asyncio streams: ``http``, ``https`` and Unix sockets.

The session client (:mod:`envhub.runtime.client`: single calls and the ``/v1/batch`` stream), chat
calls to model endpoints and judges (:mod:`envhub.http.chat`), evaluation's pre-checks and the
runtimes' health checks all go through it. Why not httpx: its layers (httpcore, anyio, h11) cost 1
to 2 ms of CPU per request, more than the rest of an episode step; this client about 0.1 ms
(``benchmarks/eval.md``). It does only what JSON over a keep-alive HTTP/1.1 connection needs: one
request at a time per connection, ``Content-Length``, chunked or close-delimited bodies, a
connection that the server closed while idle reopened once, and a pool of idle connections. TLS
uses the system's CA store (``SSL_CERT_FILE`` names another). Proxy variables are not read. The hub
client (:mod:`envhub.registry.http`) streams artifacts to files with httpx: it is not on a hot path.

- :class:`Origin`: where requests go (``http(s)://host:port``, or a Unix socket);
- :class:`Connection`: one keep-alive connection; ``request`` reads the whole answer,
  ``stream_lines`` hands each line of it to a callback as it arrives;
- :class:`ConnectionPool`: idle connections to one origin, lent for an ``async with``, at most
  ``max_connections`` at once;
- :func:`run_blocking`: for blocking callers (gymnasium's sync ``Env``, a judge inside a rubric),
  runs a request on envhub's one I/O thread and waits for it; :func:`run_soon` starts one there
  without waiting.

Every failure on the wire is a :class:`~envhub.errors.TransportError` (an ``OSError``); a
timeout is ``TimeoutError`` and leaves the connection closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import re
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from envhub import _json
from envhub.errors import TransportError

__all__ = ["Connection", "ConnectionPool", "Origin", "Response", "run_blocking", "run_soon", "supports", "within"]

T = TypeVar("T")
#: Longest head or chunk-size line the reader takes (the session protocol's lines are far shorter).
_LINE_LIMIT = 1 << 20
_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable``, or ``TimeoutError`` after ``seconds`` (no extra task on Python 3.11+)."""
    if _timeout is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, seconds)
    async with _timeout(seconds):
        return await awaitable


def supports(url: str, *, uds: str | None = None) -> bool:
    """Whether requests to ``url`` (or to the Unix socket ``uds``) can go through this client."""
    parts = urlsplit(url)
    return bool(uds) or (parts.scheme in ("http", "https") and bool(parts.hostname))


@functools.lru_cache(maxsize=4)
def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """One TLS context per CA store: loading one costs ~0.1 s, once, not per connection."""
    return ssl.create_default_context(cafile=ca_file)


@dataclass(frozen=True)
class Origin:
    """Where requests go: a host and port, or a Unix socket (``url`` then only names the Host header)."""

    host: str
    port: int
    uds: str | None
    netloc: str
    tls: bool = False

    @classmethod
    def from_url(cls, url: str, *, uds: str | None = None) -> Origin:
        if not supports(url, uds=uds):
            raise ValueError(f"envhub's HTTP client speaks http, https or a Unix socket; {url!r} is none of them")
        parts = urlsplit(url)
        tls = parts.scheme == "https" and not uds
        port = parts.port or (443 if tls else 80)
        return cls(parts.hostname or "localhost", port, uds, parts.netloc or "localhost", tls)

    def describe(self) -> str:
        return f"unix:{self.uds}" if self.uds else f"{'https' if self.tls else 'http'}://{self.netloc}"


class Response:
    """A status, headers (lower-case names; parsed when first read) and body, with httpx's names."""

    __slots__ = ("_head", "_headers", "content", "status_code")

    def __init__(self, status_code: int, head: bytes, content: bytes = b"") -> None:
        self.status_code = status_code
        self.content = content
        self._head = head
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {}
            for line in self._head.decode("latin-1").split("\r\n")[1:]:
                if line:
                    name, _, value = line.partition(":")
                    self._headers[name.strip().lower()] = value.strip()
        return self._headers

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return _json.loads(self.content)


#: The header fields that frame a body, found in the lower-cased head in one pass.
_FRAMING_FIELDS = re.compile(rb"\r\n(content-length|transfer-encoding|connection)[ \t]*:[ \t]*([^\r]*)")


def _parse_head(head: bytes) -> tuple[Response, int | None, bool, bool]:
    """(the response, its body's length or None, whether it is chunked, whether the connection stays open).

    Only what frames the body is read here, as bytes: this runs once per exchange on the fast path.
    """
    status = head[9:12]
    if not head.startswith(b"HTTP/1.") or head[12:13] not in (b" ", b"\r") or not status.isdigit():
        first_line = head.split(b"\r\n", 1)[0]
        raise ValueError(f"not an HTTP/1.x response: {first_line[:80]!r}")
    code = int(status)
    length: int | None = None
    chunked = close = False
    for name, value in _FRAMING_FIELDS.findall(head.lower()):
        value = value.rstrip(b" \t")
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.endswith(b"chunked")
        else:
            close = value == b"close"
    if code < 200 or code in (204, 304):
        length, chunked = 0, False  # never a body (RFC 9112, 6.3)
    elif chunked:
        length = None
    keep = head[5:8] == b"1.1" and not close and (chunked or length is not None)
    return Response(code, head), length, chunked, keep


class _Lines:
    """Cuts body pieces into lines (``\\n``-terminated; a last line without one counts too)."""

    __slots__ = ("on_line", "rest")

    def __init__(self, on_line: Callable[[bytes], None]) -> None:
        self.on_line = on_line
        self.rest = b""

    def feed(self, piece: bytes) -> None:
        *lines, self.rest = (self.rest + piece).split(b"\n") if self.rest else piece.split(b"\n")
        for line in lines:
            self.on_line(line)

    def end(self) -> None:
        if self.rest:
            self.on_line(self.rest)
            self.rest = b""


class Connection:
    """One keep-alive HTTP/1.1 connection to an :class:`Origin`, one exchange at a time.

    It opens on first use and after the server closed it. A request that meets a connection the
    server closed while idle is sent once more on a new one (nothing reached the server); any
    other failure, a timeout or a cancel closes it, so the next request starts clean.
    """

    __slots__ = ("_reader", "_writer", "_host_line", "origin")

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self._host_line = f"host: {origin.netloc}\r\n".encode("ascii")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send a request (a JSON ``body``) and read the whole answer, within ``timeout`` seconds."""
        exchange = self._exchange(self._head(method, path, len(body), headers) + body, None)
        return await (exchange if timeout is None else within(exchange, timeout))

    async def stream_lines(
        self, method: str, path: str, body: bytes, on_line: Callable[[bytes], None], *, headers: Mapping[str, str] | None = None
    ) -> Response:
        """Send a request and hand each line of a 2xx answer to ``on_line`` as it arrives (the
        response's ``content`` is then empty); any other answer is read whole into ``content``.

        An exception from ``on_line`` closes the connection and propagates as it is.
        """
        return await self._exchange(self._head(method, path, len(body), headers) + body, on_line)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    # --- one exchange ----------------------------------------------------------------------------

    def _head(self, method: str, path: str, length: int, headers: Mapping[str, str] | None) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._host_line
        head += b"content-type: application/json\r\ncontent-length: " + str(length).encode() + b"\r\n"
        if headers:
            for name, value in headers.items():
                if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                    raise ValueError(f"header {name!r} holds a line break")
                head += f"{name}: {value}\r\n".encode("latin-1")
        return head + b"\r\n"

    async def _exchange(self, request: bytes, on_line: Callable[[bytes], None] | None) -> Response:
        try:
            head = await self._send(request)
            try:
                response, length, chunked, keep = _parse_head(head)
            except ValueError as exc:
                raise self._error("a broken HTTP answer", exc) from None
            if on_line is not None and 200 <= response.status_code < 300:
                lines = _Lines(on_line)
                await self._read_body(length, chunked, lines.feed)
                lines.end()
            else:
                pieces: list[bytes] = []
                await self._read_body(length, chunked, pieces.append)
                response.content = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        except BaseException:
            self.close()  # a failure, a timeout or a cancel leaves the stream mid-answer
            raise
        if not keep:
            self.close()
        return response

    async def _send(self, request: bytes) -> bytes:
        """Write the request and read the answer's head, on a new connection if need be, and on a
        new one once more when a reused one turns out stale."""
        for _ in range(2):
            reused = self._writer is not None
            if not reused:
                await self._open()
            assert self._reader is not None and self._writer is not None
            try:
                self._writer.write(request)
                await self._writer.drain()
                return await self._reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                if reused and not getattr(exc, "partial", b""):
                    self.close()  # the server had closed it while idle: nothing reached it
                    continue
                raise self._error("the server closed the connection without answering", exc) from None
            except asyncio.LimitOverrunError as exc:
                raise self._error("the answer's head is too long", exc) from None
        raise AssertionError("unreachable: the second attempt is on a new connection")

    async def _open(self) -> None:
        origin = self.origin
        try:
            if origin.uds:
                self._reader, self._writer = await asyncio.open_unix_connection(origin.uds, limit=_LINE_LIMIT)
            elif origin.tls:
                context = _ssl_context(os.environ.get("SSL_CERT_FILE") or None)
                self._reader, self._writer = await asyncio.open_connection(
                    origin.host, origin.port, limit=_LINE_LIMIT, ssl=context, server_hostname=origin.host
                )
            else:
                self._reader, self._writer = await asyncio.open_connection(origin.host, origin.port, limit=_LINE_LIMIT)
        except (OSError, ssl.SSLError) as exc:  # ssl.SSLError is an OSError; named for the reader
            raise self._error("cannot connect", exc) from None

    async def _read_body(self, length: int | None, chunked: bool, sink: Callable[[bytes], None]) -> None:
        """Hand the body to ``sink``, piece by piece as it arrives (one chunk per piece)."""
        reader = self._reader
        assert reader is not None
        try:
            if chunked:
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    try:
                        size = int(size_line.split(b";", 1)[0], 16)
                    except ValueError as exc:
                        raise self._error("a broken chunked body", exc) from None
                    if size == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass  # trailer fields, up to the empty line that ends the body
                        return
                    sink((await reader.readexactly(size + 2))[:-2])
            elif length is not None:
                if length:
                    sink(await reader.readexactly(length))
            else:  # delimited by the end of the connection
                sink(await reader.read())
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise self._error("the answer broke off", exc) from None

    def _error(self, what: str, cause: BaseException) -> TransportError:
        reason = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        return TransportError(self.origin.describe(), f"{what} ({reason})")


class ConnectionPool:
    """Idle keep-alive connections to one :class:`Origin`, and at most ``max_connections`` in use.

    >>> async with pool.connection() as conn:   # an idle connection, or a new one
    ...     response = await conn.request("POST", "/v1/chat/completions", body, timeout=120)

    A connection goes back to the idle ones when its exchange ended whole and the server keeps it
    open. Waiting for one of the ``max_connections`` is not part of a request's ``timeout``.
    """

    def __init__(self, origin: Origin, *, max_connections: int | None = None) -> None:
        self.origin = origin
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None

    @classmethod
    def for_url(cls, url: str, *, uds: str | None = None, max_connections: int | None = None) -> ConnectionPool:
        return cls(Origin.from_url(url, uds=uds), max_connections=max_connections)

    @property
    def idle(self) -> int:
        """How many open connections wait for a request."""
        return len(self._idle)

    def connection(self) -> _Borrowed:
        """``async with pool.connection() as conn``: a connection of this pool's, for one exchange or more."""
        return _Borrowed(self)

    async def request(self, method: str, path: str, body: bytes = b"", **options: Any) -> Response:
        """One exchange on a connection of this pool's (``options``: those of :meth:`Connection.request`)."""
        async with self.connection() as conn:
            return await conn.request(method, path, body, **options)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def aclose(self) -> None:
        self.close()


class _Borrowed:
    """A connection lent by a :class:`ConnectionPool` for the length of an ``async with``."""

    __slots__ = ("conn", "pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        pool = self.pool
        if pool._slots is not None:
            await pool._slots.acquire()
        self.conn = pool._idle.pop() if pool._idle else Connection(pool.origin)
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        pool, conn = self.pool, self.conn
        if conn is not None and conn.is_open:  # read whole and kept alive: ready for the next exchange
            pool._idle.append(conn)
        if pool._slots is not None:
            pool._slots.release()


class _IOThread:
    """One event loop in a daemon thread, where blocking callers' requests run.

    Connections and pools belong to the loop they were used in, so a blocking caller's are only
    ever touched here. A forked child gets a thread of its own on first use.
    """

    _lock = threading.Lock()
    _current: _IOThread | None = None

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="envhub-http", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> _IOThread:
        current = cls._current
        if current is None or current.pid != os.getpid():
            with cls._lock:
                current = cls._current
                if current is None or current.pid != os.getpid():
                    current = cls._current = cls()
        return current


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` (requests on this module's connections) on envhub's I/O thread and wait.

    Bound its time inside (``timeout=`` of a request): the wait here has none. An interrupt while
    waiting (Ctrl-C) cancels the request, which closes its connection.
    """
    io = _IOThread.get()
    if threading.current_thread() is io.thread:
        coroutine.close()
        raise RuntimeError("run_blocking() called on envhub's I/O thread itself: await the coroutine instead")
    future = asyncio.run_coroutine_threadsafe(coroutine, io.loop)
    try:
        return future.result()
    except BaseException:
        if not future.done():
            future.cancel()  # the task then closes its connection: wait a moment for that
            concurrent.futures.wait([future], timeout=5.0)
        raise


def run_soon(coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
    """Start ``coroutine`` on envhub's I/O thread without waiting (safe from any thread, that one too)."""
    return asyncio.run_coroutine_threadsafe(coroutine, _IOThread.get().loop)
