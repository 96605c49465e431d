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
request, whose answers stream back call by call. Both go through envhub's HTTP client
(:mod:`envhub.http.transport`); the blocking one's requests run on its I/O thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import Generator
from typing import Any, ClassVar, Protocol

import gymnasium

from envhub import _json
from envhub.errors import (
    BodyTooLargeError,
    EnvhubError,
    InvalidActionError,
    RemoteError,
    RuntimeDiedError,
    SessionNotFoundError,
    StepTimeoutError,
    TransportError,
)
from envhub.http.transport import Connection, ConnectionPool, Origin, run_blocking, run_soon, within
from envhub.identity.manifest import EnvIdentity, Manifest
from envhub.runtime.server.protocol import PROTOCOL_VERSION
from envhub.env.spaces import Conversation, FrozenMessage, Message
from envhub.wire import from_body

Msg = dict[str, str]
UDS_BASE_URL = "http://envhub.local"
#: Seconds the client waits past the server's own step timeout before it calls the server wedged.
TIMEOUT_MARGIN_S = 15.0

# The steps of a reset that go over the wire (see _RemoteBase._reset_steps).
_LEAVE = "leave the server"  # close the session (best effort) and drop the connection
_RECONNECT = "reconnect"  # a new lease from the runtime, connected, with a new session
_OPEN_SESSION = "open a session"
_RESET = "reset"


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
    """A lease on a server that the caller runs (``envhub serve``): nothing to start or stop.

    Its ``token`` (given, else ``$ENVHUB_SERVE_TOKEN``) goes with every request as a bearer token;
    runtimes' leases carry none, so the variable never reaches a container's server."""

    def __init__(self, url: str, uds: str | None, token: str | None = None) -> None:
        self.url = url
        self.uds = uds
        self.token = token or os.environ.get("ENVHUB_SERVE_TOKEN", "").strip() or None

    def describe_death(self) -> str | None:
        return None

    def release(self, *, broken: bool = False) -> None:
        pass


def _auth_headers(lease: ServerLease) -> dict[str, str] | None:
    """The bearer token of a lease that has one, as request headers."""
    token = getattr(lease, "token", None)
    return {"authorization": f"Bearer {token}"} if token else None


def _split_target(url: str | None, uds: str | None) -> tuple[str, str | None]:
    if url and url.startswith("unix://"):
        return UDS_BASE_URL, url.removeprefix("unix://")
    if uds:
        return url or UDS_BASE_URL, uds
    if not url:
        raise ValueError("give the server's `url` (http://HOST:PORT or unix:///path.sock) or `uds`")
    return url.rstrip("/"), None


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

    def _reset_steps(self) -> Generator[str, Any, tuple[list[Msg], dict[str, Any]]]:
        """What a reset does, written once for both clients: it yields each step that goes over the
        wire for the client to perform (blocking or awaited), and gets back the step's answer, or
        its error raised where it yielded."""
        if self._leave_server and self._dead is None and not self._closed:
            self._leave_server = False
            yield _LEAVE
            self._lease.release(broken=True)
            self._dead = "left after a step timeout"
        if self._dead is not None and self._reconnect is not None and not self._closed:
            yield _RECONNECT  # the runtime died or was left: start over on a fresh server
        self._check_usable()
        try:
            answer = yield _RESET
        except SessionNotFoundError:  # reaped while idle: a new session continues where this one was
            yield _OPEN_SESSION
            answer = yield _RESET
        return self._take_reset(answer)

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
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            self._dead = f"the server did not answer {where} within {self.step_timeout_s + TIMEOUT_MARGIN_S:g} s"
            self._lease.release(broken=True)
            return StepTimeoutError(self.env_name, where, self.step_timeout_s)
        said = str(exc) if isinstance(exc, TransportError) else f"{type(exc).__name__}: {exc or 'connection lost'}"
        reason = death or self._lease.describe_death() or said
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

    def _timeout(self) -> float:
        """Seconds a request may take: the server's own step timeout, and a margin."""
        return self.step_timeout_s + TIMEOUT_MARGIN_S

    def __repr__(self) -> str:
        where = self._lease.uds or self._lease.url
        return f"<{type(self).__name__} {self.env_name} session={self._session} at {where}>"

    __str__ = __repr__


class _Steps:
    """Walks the steps of :meth:`_RemoteBase._reset_steps`: iterating gives each step; set
    ``answer`` (its answer, or the exception it raised) before the next; ``result`` is the end."""

    def __init__(self, steps: Generator[str, Any, Any]) -> None:
        self._steps = steps
        self.answer: Any = None
        self.result: Any = None

    def __iter__(self) -> _Steps:
        return self

    def __next__(self) -> str:
        answer, self.answer = self.answer, None
        try:
            return self._steps.throw(answer) if isinstance(answer, Exception) else self._steps.send(answer)
        except StopIteration as done:
            self.result = done.value
            raise StopIteration from None


async def _leave(conn: Connection, session: str | None, *, timeout: float, headers: dict[str, str] | None = None) -> None:
    """End ``session`` (best effort) and close the connection."""
    try:
        if session:
            with contextlib.suppress(Exception):
                await conn.request("DELETE", f"/v1/sessions/{session}", headers=headers, timeout=timeout)
    finally:
        conn.close()


def _finalize_sync(conn: Connection, lease: ServerLease, session: list[str | None]) -> None:
    """Release what a RemoteEnv holds if it is garbage-collected without close().

    The collection may happen on any thread, the I/O thread too: the goodbye is scheduled there,
    not waited for."""
    with contextlib.suppress(Exception):
        run_soon(_leave(conn, session[0], timeout=2.0, headers=_auth_headers(lease)))
    with contextlib.suppress(Exception):
        lease.release()


class RemoteEnv(_RemoteBase, gymnasium.Env[list, str]):
    """A ``gymnasium.Env`` whose episodes run in an ``envhub serve`` server.

    ``url`` is ``http://HOST:PORT`` or ``unix:///path.sock`` (or give ``uds``); ``kwargs`` go to the
    environment's factory in the server; ``token`` is the server's bearer token (default:
    ``$ENVHUB_SERVE_TOKEN``). Runtimes pass a ``lease`` on a server of their pool, and a
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
        token: str | None = None,
    ) -> None:
        if lease is None:
            lease = _FixedLease(*_split_target(url, uds), token=token)
        self._init_state(lease, kwargs, render_mode)
        self._reconnect = reconnect
        self._conn: Connection | None = None
        self._session_box: list[str | None] = [None]
        self._finalizer: weakref.finalize | None = None
        self._connect(lease)

    def _connect(self, lease: ServerLease) -> None:
        self._lease = lease
        self._dead = None
        self._conn = Connection(Origin.from_url(lease.url, uds=lease.uds))
        try:
            self._take_info(self._call("GET", "/v1/info", where="connect"))
            self._open_session()
        except BaseException:
            self._close_connection()
            lease.release(broken=self._dead is not None)
            raise
        self._session_box = [self._session]
        self._finalizer = weakref.finalize(self, _finalize_sync, self._conn, lease, self._session_box)

    def _open_session(self) -> None:
        self._take_session(self._call("POST", "/v1/sessions", {"kwargs": self.kwargs}, where="construction"))
        self._session_box[0] = self._session

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *, where: str) -> Any:
        assert self._conn is not None
        data = self._encode(body)
        try:
            response = run_blocking(self._conn.request(method, path, data, headers=_auth_headers(self._lease), timeout=self._timeout()))
        except (OSError, TimeoutError) as exc:
            raise self._transport_failure(exc, where) from None
        if response.status_code >= 400:
            raise self._server_error(response.status_code, response.content)
        return _json.loads(response.content) if response.content else None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Msg], dict[str, Any]]:
        super().reset(seed=seed)  # the same np_random as the server's instance, as gymnasium checks
        body = {"seed": seed, "options": options}
        steps = _Steps(self._reset_steps())
        for step in steps:
            try:
                steps.answer = self._perform(step, body)
            except Exception as exc:
                steps.answer = exc
        return steps.result

    def _perform(self, step: str, body: dict[str, Any]) -> Any:
        """One step of :meth:`_reset_steps`."""
        if step == _RESET:
            return self._call("POST", f"/v1/sessions/{self._session}/reset", body, where="reset")
        if step == _OPEN_SESSION:
            return self._open_session()
        if step == _LEAVE:
            with contextlib.suppress(Exception):
                self._call("DELETE", f"/v1/sessions/{self._session}", where="close")
            return self._drop_connection()
        assert step == _RECONNECT and self._reconnect is not None
        self._drop_connection()
        return self._connect(self._reconnect())

    def step(self, action: str) -> tuple[list[Msg], float, bool, bool, dict[str, Any]]:
        self._check_usable()
        self._check_action(action)
        answer = self._call("POST", f"/v1/sessions/{self._session}/step", {"action": action}, where="step")
        return self._take_step(action, answer)

    def _close_connection(self, *, session: str | None = None) -> None:
        """End ``session`` (best effort) and close the connection, on the I/O thread it belongs to."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                run_blocking(_leave(self._conn, session, timeout=5.0, headers=_auth_headers(self._lease)))

    def _drop_connection(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        self._close_connection()
        self._session = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._finalizer is not None:
            self._finalizer.detach()
        self._close_connection(session=self._session if self._dead is None else None)
        if self._dead is None:
            self._lease.release()
        super().close()


class AsyncRemoteEnv(_RemoteBase):
    """The remote Env contract for asyncio: ``await env.reset()``, ``await env.step(a)``.

    Build it with ``await AsyncRemoteEnv.open(url, kwargs=...)``. Each environment has its own
    keep-alive connection for its single calls; resets and steps go batched over its server's
    connection pool (see :class:`_Batcher`).
    """

    def __init__(self, lease: ServerLease, *, kwargs: dict[str, Any] | None = None, render_mode: str | None = None) -> None:
        self._init_state(lease, kwargs, render_mode)
        self._conn: Connection | None = None
        self._batch = False
        #: (event loop, lease, batcher) of the last batched call: found once, not on every step.
        self._batcher: tuple[asyncio.AbstractEventLoop, ServerLease, _Batcher] | None = None
        self._attach(lease)

    def _attach(self, lease: ServerLease) -> None:
        """Talk to the server behind ``lease`` from now on (when made, and after a reconnect)."""
        self._lease = lease
        self._dead = self._session = None
        self._conn = Connection(Origin.from_url(lease.url, uds=lease.uds))

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        uds: str | None = None,
        kwargs: dict[str, Any] | None = None,
        lease: ServerLease | None = None,
        reconnect: Any = None,
        render_mode: str | None = None,
        batch: bool = True,
        token: str | None = None,
    ) -> AsyncRemoteEnv:
        """Connect and open a session. ``reconnect`` (a blocking callable returning a new lease, as
        runtimes give) lets ``reset`` start over on a fresh server after the runtime died.
        ``batch``: resets and steps of the environments on one server, issued in the same event-loop
        tick, share one request (answers still come back one by one, as each call finishes).
        ``token``: the server's bearer token (default: ``$ENVHUB_SERVE_TOKEN``)."""
        if lease is None:
            lease = _FixedLease(*_split_target(url, uds), token=token)
        env = cls(lease, kwargs=kwargs, render_mode=render_mode)
        env._reconnect = reconnect
        env._batch = batch
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
        except (OSError, asyncio.TimeoutError, ValueError) as exc:  # ValueError: an answer line that is not JSON
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
        assert self._conn is not None
        try:
            response = await self._conn.request(method, path, data, headers=_auth_headers(self._lease), timeout=self._timeout())
        except (OSError, asyncio.TimeoutError) as exc:
            # Asking the lease why may wait a moment for an exit status: not on the event loop.
            death = None if isinstance(exc, asyncio.TimeoutError) else await asyncio.to_thread(self._lease.describe_death)
            raise self._transport_failure(exc, where, death=death) from None
        status, content = response.status_code, response.content
        if status >= 400:
            raise self._server_error(status, content)
        return _json.loads(content) if content else None

    async def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Msg], dict[str, Any]]:
        body = {"seed": seed, "options": options}
        steps = _Steps(self._reset_steps())
        for step in steps:
            try:
                steps.answer = await self._perform(step, body)
            except Exception as exc:
                steps.answer = exc
        return steps.result

    async def _perform(self, step: str, body: dict[str, Any]) -> Any:
        """One step of :meth:`_reset_steps`."""
        if step == _RESET:
            return await self._call("POST", f"/v1/sessions/{self._session}/reset", body, where="reset")
        if step == _OPEN_SESSION:
            return self._take_session(await self._call("POST", "/v1/sessions", {"kwargs": self.kwargs}, where="construction"))
        if step == _LEAVE:
            with contextlib.suppress(Exception):
                await self._call("DELETE", f"/v1/sessions/{self._session}", where="close")
            return await self._close_transport()
        assert step == _RECONNECT and self._reconnect is not None
        await self._close_transport()
        self._attach(await asyncio.to_thread(self._reconnect))  # may start a server: off the event loop
        return await self._handshake()

    async def step(self, action: str) -> tuple[list[Msg], float, bool, bool, dict[str, Any]]:
        self._check_usable()
        self._check_action(action)
        answer = await self._call("POST", f"/v1/sessions/{self._session}/step", {"action": action}, where="step")
        return self._take_step(action, answer)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._session and self._dead is None and self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.request("DELETE", f"/v1/sessions/{self._session}", headers=_auth_headers(self._lease), timeout=5.0)
        await self._close_transport()
        if self._dead is None:
            self._lease.release()

    async def _close_transport(self) -> None:
        if self._conn is not None:
            self._conn.close()

    async def __aenter__(self) -> AsyncRemoteEnv:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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
        self._pool = ConnectionPool(Origin.from_url(lease.url, uds=lease.uds))
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
            await within(self._exchange(data, futures), self.timeout)
            failure = TransportError(self._pool.origin.describe(), "the batch's answer has no line for this call")
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

        def on_line(line: bytes) -> None:
            answer = _json.loads(line)
            future = futures[answer["i"]]
            if not future.done():
                future.set_result((answer["status"], answer["body"]))

        async with self._pool.connection() as conn:
            response = await conn.stream_lines("POST", "/v1/batch", data, on_line, headers=_auth_headers(self.lease))
        if response.status_code >= 300:  # the server refused the whole batch: its one error for every call
            for future in futures:
                if not future.done():
                    future.set_result((response.status_code, response.content))


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
