"""Remote environments: the Env contract over the session protocol of ``envhub serve``.

:class:`RemoteEnv` is a ``gymnasium.Env`` like any in-process environment: ``reset`` and ``step``
return the whole conversation, the last step's ``info["rubric"]`` holds the rubric's scores, and it
has the same ``identity``, ``max_turns``, ``manifest`` and ``rubric`` (whose ``hash`` and
``describe()`` come from the server, where the real rubric runs). Only deltas cross the wire: the
client keeps the conversation and appends what each step answers.

Errors come back as the same :mod:`envhub.errors` classes as in process (``EpisodeEndedError``,
``InvalidActionError``, ``EnvironmentFailure``...), plus ``StepTimeoutError`` and
``RuntimeDiedError``, both ``EnvironmentFailure``: catching that one class covers every way an
episode can fail in the environment's code or runtime.

>>> env = RemoteEnv("http://127.0.0.1:8000", kwargs={"level": "easy"})   # or uds="/path/env.sock"
>>> obs, info = env.reset(seed=0)

:class:`AsyncRemoteEnv` is the same for asyncio, for many concurrent episodes in one event loop
(``await AsyncRemoteEnv.open(...)`` or ``await envhub.make_async(...)``, then
``await env.reset()``, ``await env.step(...)``). Each has one keep-alive connection; the resets and
steps that environments on one server issue in the same event-loop tick share one ``/v1/batch``
request, whose answers stream back call by call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import weakref
from typing import Any, ClassVar, Protocol

import gymnasium
import httpx

from envhub import _json
from envhub.errors import (
    BodyTooLargeError,
    EnvhubError,
    InvalidActionError,
    RemoteError,
    RuntimeDiedError,
    SessionNotFoundError,
    StepTimeoutError,
)
from envhub.identity.manifest import EnvIdentity, Manifest
from envhub.runtime.server.protocol import PROTOCOL_VERSION
from envhub.env.spaces import Conversation, FrozenMessage, Message
from envhub.wire import from_body

Msg = dict[str, str]
UDS_BASE_URL = "http://envhub.local"
_JSON_HEADERS = {"content-type": "application/json"}
#: Seconds the client waits past the server's own step timeout before it calls the server wedged.
TIMEOUT_MARGIN_S = 15.0


class ServerLease(Protocol):
    """A server lent by a runtime's pool to one environment: where it listens and whether it lives."""

    url: str
    uds: str | None

    def describe_death(self) -> str | None:
        """None while the server runs; else why it stopped (exit code, signal, out of memory, log tail)."""

    def release(self, *, broken: bool = False) -> None:
        """Give the server back (``broken``: it failed; stop it rather than reuse it)."""


class RemoteRubric:
    """The rubric of a remote environment: its ``hash`` and ``describe()``; scoring runs in the server."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.hash: str | None = info.get("hash")
        self.name: str = info.get("name") or "rubric"
        self._criteria: list[dict[str, Any]] = list(info.get("criteria") or [])

    def describe(self) -> list[dict[str, Any]]:
        return [dict(c) for c in self._criteria]

    @property
    def criteria(self) -> list[dict[str, Any]]:
        return self.describe()

    def score(self, episode: Any) -> Any:
        raise NotImplementedError("a remote rubric scores in its server: read info['rubric'] of the final step")

    def __repr__(self) -> str:
        return f"RemoteRubric({self.name!r}, hash={self.hash!r}, criteria={[c['name'] for c in self._criteria]})"


class _FixedLease:
    """A lease on a server that the caller runs (``envhub serve``): nothing to start or stop."""

    def __init__(self, url: str, uds: str | None) -> None:
        self.url = url
        self.uds = uds

    def describe_death(self) -> str | None:
        return None

    def release(self, *, broken: bool = False) -> None:
        pass


def _split_target(url: str | None, uds: str | None) -> tuple[str, str | None]:
    if url and url.startswith("unix://"):
        return UDS_BASE_URL, url.removeprefix("unix://")
    if uds:
        return url or UDS_BASE_URL, uds
    if not url:
        raise ValueError("give the server's `url` (http://HOST:PORT or unix:///path.sock) or `uds`")
    return url.rstrip("/"), None


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every client: loading the CA store costs ~0.1 s, once, not per environment."""
    return ssl.create_default_context()


def _transport(lease: ServerLease, *, asynchronous: bool) -> httpx.BaseTransport | httpx.AsyncBaseTransport:
    cls = httpx.AsyncHTTPTransport if asynchronous else httpx.HTTPTransport
    return cls(uds=lease.uds, retries=2, verify=_ssl_context())


class _RemoteBase:
    """What the sync and async clients share: state, attributes and the protocol's bookkeeping."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["human", "ansi"]}

    def _init_state(self, lease: ServerLease, kwargs: dict[str, Any] | None, render_mode: str | None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = Conversation()
        self.action_space = Message()
        self.kwargs = dict(kwargs or {})
        self._lease = lease
        self._session: str | None = None
        self._messages: list[Msg] = []
        self._dead: str | None = None
        self._closed = False
        self._reconnect: Any = None
        self._leave_server = False
        self.manifest: Manifest | None = None
        self._identity: EnvIdentity | None = None
        self.max_turns = 1
        self.rubric = RemoteRubric({})
        self.step_timeout_s = 30.0
        self.server_info: dict[str, Any] = {}

    # --- attributes trainers and evaluators read --------------------------------------------------

    @property
    def identity(self) -> EnvIdentity:
        if self._identity is None:
            raise RemoteError("not_connected", "the remote environment is not connected")
        return self._identity

    @property
    def env_name(self) -> str:
        return self.manifest.ref if self.manifest is not None else "remote environment"

    @property
    def session_id(self) -> str | None:
        return self._session

    @property
    def messages(self) -> list[Msg]:
        """The conversation so far (a new list of read-only messages)."""
        return list(self._messages)

    # --- protocol bookkeeping --------------------------------------------------------------------

    def _take_info(self, info: dict[str, Any]) -> None:
        if info.get("protocol") != PROTOCOL_VERSION:
            raise RemoteError(
                "protocol_mismatch",
                f"the server speaks protocol {info.get('protocol')!r}, this client {PROTOCOL_VERSION}",
                hint="use the same envhub version on both sides (rebuild the image with `envhub build`)",
            )
        self.server_info = info
        self.manifest = Manifest.model_validate(info["manifest"])
        ident = info["identity"]
        self._identity = EnvIdentity(ident["namespace"], ident["name"], ident["version"], ident.get("digest"))
        self.step_timeout_s = float(info.get("step_timeout_s") or self.manifest.limits.step_timeout_s)

    def _take_session(self, answer: dict[str, Any]) -> None:
        self._session = answer["session"]
        self.max_turns = int(answer["max_turns"])
        self.rubric = RemoteRubric(answer.get("rubric") or {})
        self._messages = []

    def _take_reset(self, answer: dict[str, Any]) -> tuple[list[Msg], dict[str, Any]]:
        self._messages = [FrozenMessage(m) for m in answer["observation"]]
        return list(self._messages), answer["info"]

    def _take_step(self, action: str, answer: dict[str, Any]) -> tuple[list[Msg], float, bool, bool, dict[str, Any]]:
        append = answer.get("append")
        if append is not None:
            size = len(self._messages) + 1 + len(append)
        else:
            size = len(answer["observation"])
        if size != answer["length"]:
            self._messages = []
            raise RemoteError(
                "protocol_delta",
                f"the conversation has {size} messages here but {answer['length']} in the server",
                hint="call reset() to start the episode again",
            )
        if append is not None:  # in place: callers hold lists of their own, never this one
            messages = self._messages
            messages.append(FrozenMessage(role="assistant", content=action))
            messages.extend(map(FrozenMessage, append))
        else:
            messages = self._messages = [FrozenMessage(m) for m in answer["observation"]]
        if self.render_mode == "human":
            self.render()
        return list(messages), float(answer["reward"]), bool(answer["terminated"]), bool(answer["truncated"]), answer["info"]

    def _check_action(self, action: Any) -> None:
        if not isinstance(action, str):
            raise InvalidActionError(self.env_name, f"expected str, got {type(action).__name__}")

    def _check_usable(self) -> None:
        if self._closed:
            raise RemoteError("closed", f"environment `{self.env_name}` is closed", hint="make the environment again")
        if self._dead is not None:
            raise RuntimeDiedError(self.env_name, self._dead)

    def _encode(self, body: dict[str, Any] | None) -> bytes:
        """The request body; one the server would refuse for its size is refused here, unsent."""
        if body is None:
            return b""
        data = _json.dumps(body)
        limit = self.server_info.get("server", {}).get("max_body_bytes")
        if limit and len(data) > limit:
            raise BodyTooLargeError(int(limit), size=len(data))
        return data

    def _server_error(self, status: int, content: bytes | dict[str, Any]) -> EnvhubError:
        error = self._error_for(status, content)
        if isinstance(error, StepTimeoutError) and self._reconnect is not None:
            # The timed-out step still runs in one of the server's threads, which may never end:
            # leave that server at the next reset; the pool stops it once its last session leaves.
            self._leave_server = True
        return error

    def _error_for(self, status: int, content: bytes | dict[str, Any]) -> EnvhubError:
        payload: Any = content
        if isinstance(content, (bytes, str)):
            try:
                payload = _json.loads(content)
            except ValueError:
                payload = None
        return from_body(payload, status, defaults={"env": self.env_name})

    def _transport_failure(self, exc: BaseException, where: str, *, death: str | None = None) -> EnvhubError:
        """A request that got no answer: the server hung past its own timeout, or died.

        ``death`` is the lease's account of why the server stopped, when the caller already asked.
        """
        timed_out = isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError))
        if timed_out and not isinstance(exc, httpx.ConnectTimeout):
            self._dead = f"the server did not answer {where} within {self.step_timeout_s + TIMEOUT_MARGIN_S:g} s"
            self._lease.release(broken=True)
            return StepTimeoutError(self.env_name, where, self.step_timeout_s)
        reason = death or self._lease.describe_death() or f"{type(exc).__name__}: {exc or 'connection lost'}"
        self._dead = reason
        self._lease.release(broken=True)
        return RuntimeDiedError(self.env_name, reason)

    def render(self) -> str | None:
        if not self._messages:
            return None
        text = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in self._messages)
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.step_timeout_s + TIMEOUT_MARGIN_S, connect=10.0)

    def __repr__(self) -> str:
        where = self._lease.uds or self._lease.url
        return f"<{type(self).__name__} {self.env_name} session={self._session} at {where}>"

    __str__ = __repr__


def _finalize_sync(http: httpx.Client, lease: ServerLease, session: list[str | None]) -> None:
    """Release what a RemoteEnv holds if it is garbage-collected without close()."""
    with contextlib.suppress(Exception):
        if session[0]:
            http.delete(f"/v1/sessions/{session[0]}", timeout=2.0)
    with contextlib.suppress(Exception):
        http.close()
    with contextlib.suppress(Exception):
        lease.release()


class RemoteEnv(_RemoteBase, gymnasium.Env[list, str]):
    """A ``gymnasium.Env`` whose episodes run in an ``envhub serve`` server.

    ``url`` is ``http://HOST:PORT`` or ``unix:///path.sock`` (or give ``uds``); ``kwargs`` go to the
    environment's factory in the server. Runtimes pass a ``lease`` on a server of their pool, and a
    ``reconnect`` callable that lends a fresh one: after the runtime died, the next ``reset`` starts
    over on a new server instead of failing.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        uds: str | None = None,
        kwargs: dict[str, Any] | None = None,
        lease: ServerLease | None = None,
        reconnect: Any = None,
        render_mode: str | None = None,
    ) -> None:
        if lease is None:
            lease = _FixedLease(*_split_target(url, uds))
        self._init_state(lease, kwargs, render_mode)
        self._reconnect = reconnect
        self._http: httpx.Client | None = None
        self._session_box: list[str | None] = [None]
        self._finalizer: weakref.finalize | None = None
        self._connect(lease)

    def _connect(self, lease: ServerLease) -> None:
        self._lease = lease
        self._dead = None
        self._http = httpx.Client(base_url=lease.url, transport=_transport(lease, asynchronous=False), timeout=self._timeout())
        try:
            self._take_info(self._call("GET", "/v1/info", where="connect"))
            self._http.timeout = self._timeout()
            self._open_session()
        except BaseException:
            self._http.close()
            lease.release(broken=self._dead is not None)
            raise
        self._session_box = [self._session]
        self._finalizer = weakref.finalize(self, _finalize_sync, self._http, lease, self._session_box)

    def _open_session(self) -> None:
        self._take_session(self._call("POST", "/v1/sessions", {"kwargs": self.kwargs}, where="construction"))
        self._session_box[0] = self._session

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *, where: str) -> Any:
        assert self._http is not None
        data = self._encode(body)
        try:
            response = self._http.request(method, path, content=data, headers=_JSON_HEADERS)
        except httpx.HTTPError as exc:
            raise self._transport_failure(exc, where) from None
        if response.status_code >= 400:
            raise self._server_error(response.status_code, response.content)
        return _json.loads(response.content) if response.content else None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Msg], dict[str, Any]]:
        super().reset(seed=seed)  # the same np_random as the server's instance, as gymnasium checks
        if self._leave_server and self._dead is None and not self._closed:
            self._leave_server = False
            with contextlib.suppress(Exception):
                self._call("DELETE", f"/v1/sessions/{self._session}", where="close")
            self._drop_connection()
            self._lease.release(broken=True)
            self._dead = "left after a step timeout"
        if self._dead is not None and self._reconnect is not None and not self._closed:
            self._drop_connection()
            self._connect(self._reconnect())
        self._check_usable()
        body = {"seed": seed, "options": options}
        try:
            answer = self._call("POST", f"/v1/sessions/{self._session}/reset", body, where="reset")
        except SessionNotFoundError:  # reaped while idle: a new session continues where this one was
            self._open_session()
            answer = self._call("POST", f"/v1/sessions/{self._session}/reset", body, where="reset")
        return self._take_reset(answer)

    def step(self, action: str) -> tuple[list[Msg], float, bool, bool, dict[str, Any]]:
        self._check_usable()
        self._check_action(action)
        answer = self._call("POST", f"/v1/sessions/{self._session}/step", {"action": action}, where="step")
        return self._take_step(action, answer)

    def _drop_connection(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._http is not None:
            self._http.close()
        self._session = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._http is not None:
            if self._session and self._dead is None:
                with contextlib.suppress(Exception):
                    self._http.delete(f"/v1/sessions/{self._session}", timeout=5.0)
            self._http.close()
        if self._dead is None:
            self._lease.release()
        super().close()


class AsyncRemoteEnv(_RemoteBase):
    """The remote Env contract over ``httpx.AsyncClient``: ``await env.reset()``, ``await env.step(a)``.

    Build it with ``await AsyncRemoteEnv.open(url, kwargs=...)``. Each environment has its own
    keep-alive connection by default; an ``http`` client passed in is shared and not closed by
    ``close()`` (fine for tens of environments; for thousands, let each have its own).
    """

    def __init__(self, lease: ServerLease, *, kwargs: dict[str, Any] | None = None, http: httpx.AsyncClient | None = None,
                 render_mode: str | None = None) -> None:
        self._init_state(lease, kwargs, render_mode)
        self._own_http = False
        self._http = http
        self._batch = False
        #: (event loop, lease, batcher) of the last batched call: found once, not on every step.
        self._batcher: tuple[asyncio.AbstractEventLoop, ServerLease, _Batcher] | None = None
        self._conn = _Connection(lease)
        if http is None and not self._conn.usable:  # https: httpx does TLS
            http = httpx.AsyncClient(base_url=lease.url, transport=_transport(lease, asynchronous=True), timeout=self._timeout())
            self._http, self._own_http = http, True

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        uds: str | None = None,
        kwargs: dict[str, Any] | None = None,
        http: httpx.AsyncClient | None = None,
        lease: ServerLease | None = None,
        reconnect: Any = None,
        render_mode: str | None = None,
        batch: bool = True,
    ) -> AsyncRemoteEnv:
        """Connect and open a session. ``reconnect`` (a blocking callable returning a new lease, as
        runtimes give) lets ``reset`` start over on a fresh server after the runtime died.
        ``batch``: resets and steps of the environments on one server, issued in the same event-loop
        tick, share one request (answers still come back one by one, as each call finishes)."""
        if lease is None:
            lease = _FixedLease(*_split_target(url, uds))
        env = cls(lease, kwargs=kwargs, http=http, render_mode=render_mode)
        env._reconnect = reconnect
        env._batch = batch and http is None and env._conn.usable
        await env._handshake()
        return env

    async def _handshake(self) -> None:
        try:
            self._take_info(await self._call("GET", "/v1/info", where="connect"))
            self._take_session(await self._call("POST", "/v1/sessions", {"kwargs": self.kwargs}, where="construction"))
        except BaseException:
            await self._close_transport()
            self._lease.release(broken=self._dead is not None)
            raise

    async def _batched(self, op: str, fields: dict[str, Any], *, where: str) -> Any:
        """A reset or step through the batcher of this environment's server."""
        data = self._encode({"op": op, "session": self._session, **fields})
        loop = asyncio.get_running_loop()
        cached = self._batcher
        if cached is not None and cached[0] is loop and cached[1] is self._lease:
            batcher = cached[2]
        else:  # first call, or a new event loop or server since the last
            limit = int(self.server_info.get("server", {}).get("max_body_bytes") or 8 * 1024 * 1024)
            batcher = _batcher_for(self._lease, limit, self.step_timeout_s + TIMEOUT_MARGIN_S)
            self._batcher = (loop, self._lease, batcher)
        try:
            status, body = await batcher.submit(data)  # the batcher bounds the wait
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            death = None if isinstance(exc, asyncio.TimeoutError) else await asyncio.to_thread(self._lease.describe_death)
            raise self._transport_failure(exc, where, death=death) from None
        if status >= 400:
            raise self._server_error(status, body)
        return body

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *, where: str) -> Any:
        if self._batch and method == "POST" and where in ("reset", "step"):
            fields = dict(body or {})
            return await self._batched(where, fields, where=where)
        data = self._encode(body)
        try:
            if self._http is not None:
                response = await self._http.request(method, path, content=data, headers=_JSON_HEADERS, timeout=self._timeout())
                status, content = response.status_code, response.content
            else:
                status, content = await self._conn.request(method, path, data, self.step_timeout_s + TIMEOUT_MARGIN_S)
        except (httpx.HTTPError, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            # Asking the lease why may wait a moment for an exit status: not on the event loop.
            death = None if isinstance(exc, (asyncio.TimeoutError, httpx.TimeoutException)) else (
                await asyncio.to_thread(self._lease.describe_death)
            )
            raise self._transport_failure(exc, where, death=death) from None
        if status >= 400:
            raise self._server_error(status, content)
        return _json.loads(content) if content else None

    async def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Msg], dict[str, Any]]:
        if self._leave_server and self._dead is None and not self._closed:
            self._leave_server = False
            with contextlib.suppress(Exception):
                await self._call("DELETE", f"/v1/sessions/{self._session}", where="close")
            self._lease.release(broken=True)
            self._dead = "left after a step timeout"
        if self._dead is not None and self._reconnect is not None and not self._closed:
            self._conn.close()
            self._lease = await asyncio.to_thread(self._reconnect)  # may start a server: off the loop
            self._dead, self._session = None, None
            self._conn = _Connection(self._lease)
            await self._handshake()
        self._check_usable()
        body = {"seed": seed, "options": options}
        try:
            answer = await self._call("POST", f"/v1/sessions/{self._session}/reset", body, where="reset")
        except SessionNotFoundError:
            self._take_session(await self._call("POST", "/v1/sessions", {"kwargs": self.kwargs}, where="construction"))
            answer = await self._call("POST", f"/v1/sessions/{self._session}/reset", body, where="reset")
        return self._take_reset(answer)

    async def step(self, action: str) -> tuple[list[Msg], float, bool, bool, dict[str, Any]]:
        self._check_usable()
        self._check_action(action)
        answer = await self._call("POST", f"/v1/sessions/{self._session}/step", {"action": action}, where="step")
        return self._take_step(action, answer)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._session and self._dead is None:
            with contextlib.suppress(Exception):
                if self._http is not None:
                    await self._http.delete(f"/v1/sessions/{self._session}", timeout=5.0)
                else:
                    await self._conn.request("DELETE", f"/v1/sessions/{self._session}", b"", 5.0)
        await self._close_transport()
        if self._dead is None:
            self._lease.release()

    async def _close_transport(self) -> None:
        self._conn.close()
        if self._own_http and self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncRemoteEnv:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _BatchRefused(Exception):
    """The server refused a whole batch (one JSON error body instead of streamed answers)."""

    def __init__(self, status: int, content: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.content = content


class _Batcher:
    """Coalesces the resets and steps that environments on one server issue in one event-loop tick.

    They go as one ``POST /v1/batch``, whose answers stream back one line per call as each call
    finishes, so a slow step delays only its own caller. Many sessions then cost the server one
    request per tick instead of one per step. Each batch is bounded by ``timeout`` seconds as a
    whole (one timer per batch, not one per call): the server times out each call well before.
    """

    def __init__(self, lease: ServerLease, limit: int, timeout: float) -> None:
        self.lease = lease
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self._limit = limit
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._scheduled = False
        self._idle: list[_Connection] = []
        self._tasks: set[asyncio.Task] = set()

    def submit(self, call: bytes) -> asyncio.Future:
        future = self.loop.create_future()
        self._pending.append((call, future))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        batch: list[tuple[bytes, asyncio.Future]] = []
        size = 0
        for item in pending:
            if batch and size + len(item[0]) > self._limit:
                self._spawn(batch)
                batch, size = [], 0
            batch.append(item)
            size += len(item[0]) + 1
        if batch:
            self._spawn(batch)

    def _spawn(self, batch: list[tuple[bytes, asyncio.Future]]) -> None:
        task = self.loop.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[bytes, asyncio.Future]]) -> None:
        futures = [f for _, f in batch]
        data = b'{"calls":[' + b",".join(call for call, _ in batch) + b"]}"
        failure: BaseException
        try:
            await asyncio.wait_for(self._exchange(data, futures), self.timeout)
            failure = ConnectionError("the batch's answer has no line for this call")
        except asyncio.TimeoutError:
            failure = asyncio.TimeoutError()
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:
            failure = exc
        for future in futures:
            if not future.done():  # its caller may have given up (cancel)
                future.set_exception(failure)

    async def _exchange(self, data: bytes, futures: list[asyncio.Future]) -> None:
        """Send the batch and hand each answer line to its caller's future."""
        answered = [False]

        def on_line(line: bytes) -> None:
            answer = _json.loads(line)
            answered[0] = True
            future = futures[answer["i"]]
            if not future.done():
                future.set_result((answer["status"], answer["body"]))

        for attempt in (0, 1):
            conn = self._idle.pop() if self._idle else _Connection(self.lease)
            reused = conn._writer is not None
            try:
                await conn.stream_lines("/v1/batch", data, on_line)
            except _BatchRefused as refused:
                self._idle.append(conn)
                for future in futures:
                    if not future.done():
                        future.set_result((refused.status, refused.content))
                return
            except (ConnectionError, asyncio.IncompleteReadError):
                if reused and not answered[0] and not attempt:
                    continue  # the server had closed this idle connection: nothing reached it
                raise
            self._idle.append(conn)
            return

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str | None], _Batcher]] = (
    weakref.WeakKeyDictionary()
)


def _batcher_for(lease: ServerLease, limit: int, timeout: float) -> _Batcher:
    """The one batcher of this event loop for the server behind ``lease``."""
    per_loop = _batchers.setdefault(asyncio.get_running_loop(), {})
    key = (lease.url, lease.uds)
    batcher = per_loop.get(key)
    if batcher is None:
        batcher = per_loop[key] = _Batcher(lease, limit, timeout)
    batcher.timeout = max(batcher.timeout, timeout)
    return batcher


class _Connection:
    """One keep-alive HTTP/1.1 connection of an :class:`AsyncRemoteEnv`, on asyncio streams.

    Lighter than an httpx pool per request: the protocol's answers always carry Content-Length, so
    a request is one write and a response two reads. A connection the server closed while idle is
    reopened and the request sent once more (nothing reached the server on the stale one).
    """

    def __init__(self, lease: ServerLease) -> None:
        url = httpx.URL(lease.url)
        self.uds = lease.uds
        self.host = url.host or "127.0.0.1"
        self.port = url.port or 80
        self.usable = bool(self.uds) or url.scheme == "http"
        self._host_header = f"host: {url.netloc.decode('ascii')}\r\n".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        if self.uds:
            self._reader, self._writer = await asyncio.open_unix_connection(self.uds, limit=1 << 20)
        else:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def request(self, method: str, path: str, data: bytes, timeout: float) -> tuple[int, bytes]:
        head = self._head(method, path, len(data))
        for attempt in (0, 1):
            reused = self._writer is not None
            if not reused:
                await asyncio.wait_for(self._open(), timeout)
            try:
                return await asyncio.wait_for(self._roundtrip(head + data), timeout)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.close()
                stale = reused and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial)
                if attempt or not stale:
                    raise
            except BaseException:
                self.close()  # a timeout or a cancel leaves the stream mid-response
                raise
        raise AssertionError("unreachable")

    async def stream_lines(self, path: str, data: bytes, on_line: Any) -> None:
        """POST ``data`` and hand every line of the (chunked) answer to ``on_line`` as it arrives."""
        if self._writer is None:
            await self._open()
        assert self._reader is not None and self._writer is not None
        try:
            self._writer.write(self._head("POST", path, len(data)) + data)
            await self._writer.drain()
            status, length, chunked, close = await self._read_head()
            if not chunked:  # one call's line, sent whole; or an error for the whole batch
                content = await self._reader.readexactly(length) if length else b""
                if status != 200:
                    raise _BatchRefused(status, content)
                for line in content.splitlines():
                    on_line(line)
                if close:
                    self.close()
                return
            buffer = b""
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self._reader.readuntil(b"\r\n")
                    break
                buffer += (await self._reader.readexactly(size + 2))[:-2]
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    on_line(line)
            if close:
                self.close()
        except BaseException:
            self.close()
            raise

    def _head(self, method: str, path: str, length: int) -> bytes:
        return (
            f"{method} {path} HTTP/1.1\r\n".encode()
            + self._host_header
            + b"content-type: application/json\r\ncontent-length: "
            + str(length).encode()
            + b"\r\n\r\n"
        )

    async def _read_head(self) -> tuple[int, int, bool, bool]:
        assert self._reader is not None
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and value == b"chunked":
                chunked = True
            elif name == b"connection" and value == b"close":
                close = True
        return status, length, chunked, close

    async def _roundtrip(self, payload: bytes) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(payload)
        await self._writer.drain()
        status, length, _, close = await self._read_head()
        content = await self._reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, content

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def connect(url: str, **kwargs: Any) -> RemoteEnv:
    """A :class:`RemoteEnv` on a running server; ``kwargs`` go to the environment's factory."""
    return RemoteEnv(url, kwargs=kwargs)
