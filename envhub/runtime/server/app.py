"""The session server: many concurrent episodes of one environment behind the HTTP protocol.

One :class:`SessionServer` serves one environment folder. Each session is its own environment
instance (the entrypoint's factory called with the session's ``kwargs``). Environment code never runs
on the event loop: it runs in a thread pool under a step timeout, so a slow or hung step delays only
its own session. A step that times out ends its episode; the session's instance is abandoned (the
thread cannot be stopped) and the next ``reset`` builds a fresh one. Idle sessions are reaped.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from envhub import _json
from envhub.env.core import ChatEnv
from envhub.errors import (
    BadRequestError,
    CapacityError,
    EntrypointError,
    EnvhubError,
    EnvironmentFailure,
    EpisodeEndedError,
    InvalidOptionError,
    MethodNotAllowedError,
    NotFoundError,
    SessionBusyError,
    SessionNotFoundError,
    StepTimeoutError,
)
from envhub.runtime.loading import attach_manifest, load_factory
from envhub.identity.manifest import EnvIdentity, load_manifest
from envhub.runtime.server.auth import BearerAuth
from envhub.runtime.server.openenv import openenv_routes
from envhub.runtime.server.protocol import MAX_SESSIONS, PROTOCOL_VERSION, error_headers
from envhub.runtime.server.requests import checked_options, checked_seed, json_object, read_body
from envhub.wire import to_body

log = logging.getLogger("envhub.runtime.server")


@dataclass
class ServerConfig:
    """How a :class:`SessionServer` bounds its work."""

    #: Most sessions held at once; past it a new one takes the seat of the session idle longest
    #: (if idle ``evict_idle_s``), else it is refused with ``capacity`` (HTTP 503, ``Retry-After``).
    max_sessions: int = MAX_SESSIONS
    #: Sessions untouched this long are closed; 0 or None keeps them until they are deleted.
    idle_timeout_s: float | None = 600.0
    #: When the server is full, sessions idle this long are closed to seat new ones (least recently
    #: used first), so that idle seats held by one client do not lock others out for
    #: ``idle_timeout_s``; None waits for the reaper.
    evict_idle_s: float | None = 60.0
    #: Time allowed to one reset or step; None takes ``[limits] step_timeout_s`` from the manifest.
    step_timeout_s: float | None = None
    #: Largest request body accepted, in bytes (``body_too_large``, HTTP 413, past it). An action
    #: may hold 1M characters (up to 4 MB of UTF-8, more once JSON-escaped).
    max_body_bytes: int = 8 * 1024 * 1024
    #: Threads that run environment code. Steps of different sessions run concurrently up to this.
    threads: int = 16
    #: Calls stuck past the step timeout that the server outlives: each keeps its thread (a thread
    #: cannot be stopped), and a fresh one takes its place among ``threads``. Past this many, calls
    #: that need a thread are refused with ``capacity`` (503) and ``/healthz`` answers 503 until
    #: stuck calls return; restart the server. None: three times ``threads``.
    max_stuck_calls: int | None = None
    #: Seconds a client has to send a request's headers, on a new connection or a kept-alive one;
    #: past it the connection is closed (a client trickling a header holds a socket, not the server).
    header_timeout_s: float = 10.0
    #: Seconds a request's body has to arrive once its headers have (``request_timeout``, HTTP 408).
    body_timeout_s: float = 30.0


@dataclass
class Session:
    id: str
    kwargs: dict[str, Any]
    env: ChatEnv | None = None
    #: The conversation as last sent to the client, to answer ``step`` with a delta.
    sent: list[dict[str, str]] | None = None
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    #: Why the environment instance was abandoned (a timeout); the next reset builds a new one.
    abandoned: str | None = None


def json_response(payload: Any, status: int = 200, *, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.dumps(payload, _json.plain), status_code=status, media_type="application/json", headers=headers)


def error_response(exc: BaseException, *, where: str) -> Response:
    """The JSON error answer to ``exc`` (see :func:`answer_error`), with its headers."""
    status, body = answer_error(exc, where=where)
    return json_response(body, status, headers=error_headers(exc))


class SessionServer:
    """The sessions of one environment folder, and the ASGI app that serves them (:attr:`app`)."""

    def __init__(
        self, folder: str | Path, *, digest: str | None = None, config: ServerConfig | None = None, token: str | None = None
    ) -> None:
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        self.config = config or ServerConfig()
        self.factory = load_factory(self.folder, self.manifest)
        self.digest = digest
        self.step_timeout_s = self.config.step_timeout_s or self.manifest.limits.step_timeout_s
        self.max_stuck_calls = self.config.max_stuck_calls if self.config.max_stuck_calls is not None else 3 * self.config.threads
        self.sessions: dict[str, Session] = {}
        self._executor = self._new_executor()
        self._dispatcher = _Dispatcher(self)
        self._hung = 0
        self._reaper: asyncio.Task | None = None
        self._counter = itertools.count(1)
        self.started = time.time()
        # A probe instance: fails fast on a broken entrypoint, and tells the default rubric and turns.
        probe = self._build({})
        self.default_rubric = _rubric_info(probe)
        self.default_max_turns = probe.max_turns
        if self.digest is None:
            from envhub.identity.artifact import folder_digest

            self.digest = folder_digest(self.folder)
        self.identity = EnvIdentity(self.manifest.namespace, self.manifest.name, self.manifest.version, self.digest)
        with contextlib.suppress(Exception):
            probe.close()
        #: The ASGI app; with a ``token``, every route of both protocols asks for it (see :mod:`.auth`).
        self.app: Any = self._make_app() if token is None else BearerAuth(self._make_app(), token)

    # --- environment instances -------------------------------------------------------------------

    def _new_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        # Room beyond `threads` for threads stuck in calls past their timeout: the dispatcher keeps
        # `threads` runners working besides them (and refuses calls once all the room is taken).
        workers = self.config.threads + self.max_stuck_calls
        return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="envhub-env")

    def prestart_threads(self) -> None:
        """Start every worker thread now, so that their stacks exist before memory is measured."""
        futures = [self._executor.submit(time.sleep, 0.05) for _ in range(self.config.threads)]
        concurrent.futures.wait(futures)

    def _build(self, kwargs: dict[str, Any]) -> ChatEnv:
        ref = self.manifest.ref
        try:
            env = self.factory(**kwargs)
        except EnvhubError:
            raise
        except (TypeError, ValueError) as exc:
            if kwargs:  # the factory builds without arguments (the probe did): these are the caller's mistake
                raise InvalidOptionError(ref, ", ".join(sorted(kwargs)), f"the factory refused them: {type(exc).__name__}: {exc}") from exc
            raise EntrypointError(ref, self.manifest.entrypoint, f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise EntrypointError(ref, self.manifest.entrypoint, f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(env, ChatEnv):
            raise EntrypointError(ref, self.manifest.entrypoint, f"returned {type(env).__name__}, expected an envhub.ChatEnv")
        attach_manifest(env, self.manifest, self.folder, digest=self.digest, max_turns_given="max_turns" in kwargs)
        return env

    async def _run(self, session: Session, fn: Callable[[], Any], where: str) -> Any:
        """Run ``fn`` on a worker under the step timeout, counted from now.

        The dispatcher's watchdog enforces the timeout (one timer for all calls, not one each): a
        call that times out before a worker took it is dropped (the environment was not touched);
        one that times out while running abandons the session's instance, whose thread is stuck.
        """
        return await self._dispatcher.submit(fn, session, where).future

    def _time_out(self, job: _Job) -> None:
        with job.lock:
            job.dropped = True
            running = job.started
        if running:
            self._abandon(job)
        if not job.future.done():
            job.future.set_exception(StepTimeoutError(self.manifest.ref, job.where, self.step_timeout_s))

    def _abandon(self, job: _Job) -> None:
        session = job.session
        session.env = None
        session.sent = None
        session.abandoned = f"its previous {job.where} ran past the step timeout"
        job.stuck = True
        self._hung += 1  # back down when the call returns, if ever (see _Dispatcher._deliver)
        if self._hung >= self.config.threads:
            log.warning("%d environment calls are stuck past the step timeout, each holding a thread", self._hung)

    @property
    def degraded(self) -> bool:
        """Every thread kept for stuck calls is taken: new calls are refused until some return."""
        return self._hung >= self.max_stuck_calls

    def _stuck_error(self) -> CapacityError:
        error = CapacityError(
            self.max_stuck_calls,
            what="environment calls stuck past their step timeout",
            hint="retry later, or restart the server: the environment hangs on some inputs",
        )
        error.retry_after = max(1, math.ceil(self.step_timeout_s))  # type: ignore[attr-defined]
        return error

    def _make_room(self) -> None:
        """Seat a new session in a full server: close the least recently used idle session, if it
        has been idle ``evict_idle_s``; else :class:`CapacityError` with when to retry."""
        evict_after = self.config.evict_idle_s
        idle = [s for s in self.sessions.values() if not s.busy]
        oldest = min(idle, key=lambda s: s.last_used, default=None)
        now = time.monotonic()
        if oldest is not None and evict_after is not None and now - oldest.last_used >= evict_after:
            log.info("server full: closing session %s, idle %.0f s, to seat a new one", oldest.id, now - oldest.last_used)
            self.sessions.pop(oldest.id, None)
            self._dispose(oldest)
            return
        waits = [self.step_timeout_s] if len(idle) < len(self.sessions) else []  # a busy seat frees no sooner
        if oldest is not None:
            waits += [limit - (now - oldest.last_used) for limit in (evict_after, self.config.idle_timeout_s) if limit]
        error = CapacityError(self.config.max_sessions)
        error.retry_after = max(1, math.ceil(min(waits, default=1)))  # type: ignore[attr-defined]
        raise error

    # --- sessions --------------------------------------------------------------------------------

    def _session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFoundError(session_id)
        if session.busy:
            raise SessionBusyError(session_id)
        session.last_used = time.monotonic()
        return session

    async def open(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(self.sessions) >= self.config.max_sessions:
            self._make_room()
        session_id = f"s{next(self._counter)}-{secrets.token_hex(6)}"
        session = Session(session_id, kwargs)
        session.busy = True
        self.sessions[session_id] = session  # counted against capacity while its env is built
        try:
            session.env = await self._run(session, lambda: self._build(kwargs), "construction")
        except BaseException:
            self.sessions.pop(session_id, None)
            raise
        finally:
            session.busy = False
        env = session.env
        return {
            "session": session_id,
            "max_turns": env.max_turns,
            "rubric": _rubric_info(env),
            "step_timeout_s": self.step_timeout_s,
        }

    async def reset(self, session_id: str, seed: int | None, options: dict[str, Any] | None) -> dict[str, Any]:
        session = self._session(session_id)
        session.busy = True
        try:
            if session.env is None:  # abandoned after a timeout: a fresh instance for the new episode
                session.env = await self._run(session, lambda: self._build(session.kwargs), "construction")
                session.abandoned = None
            env = session.env
            observation, info = await self._run(session, lambda: env.reset(seed=seed, options=options), "reset")
        finally:
            session.busy = False
            session.last_used = time.monotonic()
        session.sent = observation
        return {"observation": observation, "info": info}

    async def step(self, session_id: str, action: Any) -> dict[str, Any]:
        session, job = self.start_step(session_id, action)
        try:
            await job.future
        except asyncio.CancelledError:
            session.busy = False
            raise
        except Exception:
            pass  # finish_step raises it
        return self.finish_step(job, action)

    def start_step(self, session_id: str, action: Any) -> tuple[Session, _Job]:
        """Queue a step: its result comes in the returned job's future, for :meth:`finish_step`.

        Two halves without a coroutine between them, so that a batch of steps costs no task each.
        """
        session = self._session(session_id)
        env = session.env
        if env is None:
            raise EpisodeEndedError(self.manifest.ref, (session.abandoned or "the episode has ended") + "; call reset()")
        if type(env).step is ChatEnv.step:  # the SDK's own step, which tells the delta itself
            job = self._dispatcher.submit(lambda: env.step_delta(action), session, "step", delta_of=env)
        else:
            job = self._dispatcher.submit(lambda: env.step(action), session, "step")
        session.busy = True
        return session, job

    def finish_step(self, job: _Job, action: Any) -> dict[str, Any]:
        """The answer to a step whose job is done: the conversation as a delta where it can be."""
        session = job.session
        session.busy = False
        session.last_used = time.monotonic()
        try:
            result, reward, terminated, truncated, info = job.future.result()
        except EnvironmentFailure:
            session.sent = None
            raise
        answer: dict[str, Any] = {"reward": float(reward), "terminated": bool(terminated), "truncated": bool(truncated), "info": info}
        if job.delta_of is not None:  # result: the messages after the action, or None (ChatEnv.step_delta)
            conversation = job.delta_of.episode.messages
            answer["length"] = len(conversation)
            if result is None:
                answer["observation"] = list(conversation)  # frozen messages: a shallow copy is a copy
            else:
                answer["append"] = result
            session.sent = None  # the environment tracks the delta
            return answer
        observation = result
        answer["length"] = len(observation)
        sent = session.sent
        n = len(sent) if sent is not None else -1
        if (
            sent is not None
            and len(observation) > n
            and observation[n] == {"role": "assistant", "content": action}
            and observation[:n] == sent
        ):
            answer["append"] = observation[n + 1 :]
        else:
            answer["observation"] = observation
        session.sent = observation
        return answer

    async def call(self, call: Any) -> tuple[int, dict[str, Any]]:
        """One ``reset`` or ``step`` of a batch, answered as (HTTP status, body) like its own route."""
        try:
            if not isinstance(call, dict) or not isinstance(call.get("session"), str):
                raise BadRequestError("each call needs `op` (reset or step) and `session`")
            op = call.get("op")
            if op == "step":
                if "action" not in call:
                    raise BadRequestError("a step call needs `action`: the assistant's message text")
                return 200, await self.step(call["session"], call["action"])
            if op == "reset":
                seed, options = self.reset_args(call)
                return 200, await self.reset(call["session"], seed, options)
            raise BadRequestError(f"unknown op {op!r}: use reset or step")
        except Exception as exc:  # every failure becomes this call's answer; the others go on
            return answer_error(exc)

    async def close_session(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise SessionNotFoundError(session_id)
        self._dispose(session)

    def _dispose(self, session: Session) -> None:
        env = session.env
        session.env = None
        if env is not None:
            self._executor.submit(_close_quietly, env)

    async def _reap_forever(self) -> None:
        idle = self.config.idle_timeout_s
        assert idle
        interval = min(max(idle / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            self.reap(idle)

    def reap(self, idle_s: float) -> int:
        """Close sessions untouched for ``idle_s`` seconds; returns how many."""
        cutoff = time.monotonic() - idle_s
        stale = [s for s in self.sessions.values() if s.last_used < cutoff and not s.busy]
        for session in stale:
            self.sessions.pop(session.id, None)
            self._dispose(session)
        if stale:
            log.info("reaped %d idle session(s)", len(stale))
        return len(stale)

    def reset_args(self, body: dict[str, Any]) -> tuple[int | None, dict[str, Any] | None]:
        """(seed, options) of a reset's body, checked before the environment sees them."""
        return checked_seed(body.get("seed")), checked_options(self.manifest.ref, body.get("options"))

    def info(self) -> dict[str, Any]:
        limits = self.manifest.limits.model_dump()
        return {
            "protocol": PROTOCOL_VERSION,
            "identity": self.identity.to_dict(),
            "manifest": self.manifest.model_dump(mode="json"),
            "max_turns": self.default_max_turns,
            "rubric": self.default_rubric,
            "limits": limits,
            "step_timeout_s": self.step_timeout_s,
            "server": {
                "max_sessions": self.config.max_sessions,
                "idle_timeout_s": self.config.idle_timeout_s,
                "max_body_bytes": self.config.max_body_bytes,
                "threads": self.config.threads,
                "pid": os.getpid(),
            },
        }

    # --- HTTP ------------------------------------------------------------------------------------

    async def _body(self, request: Request, *, scale: int = 1) -> dict[str, Any]:
        """The request's JSON object, read within the size and time limits (see :mod:`.requests`)."""
        raw = await read_body(request, limit=self.config.max_body_bytes * scale, timeout_s=self.config.body_timeout_s)
        return json_object(raw)

    def _make_app(self) -> Starlette:
        server = self

        def handler(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
            async def endpoint(request: Request) -> Response:
                try:
                    return await fn(request)
                except Exception as exc:
                    return error_response(exc, where=f"{request.method} {request.url.path}")

            return endpoint

        async def healthz(request: Request) -> Response:
            state = {"status": "ok", "sessions": len(server.sessions), "hung_threads": server._hung}
            if server.degraded:  # alive, but refusing calls: what a supervisor restarts
                state["status"] = "degraded"
                return json_response(state, 503, headers={"Retry-After": str(server._stuck_error().retry_after)})
            return json_response(state)

        async def info(request: Request) -> Response:
            return json_response(server.info())

        async def openapi(request: Request) -> Response:
            from envhub.runtime.server.openapi import openapi_document

            return json_response(openapi_document(server.manifest.ref))

        async def open_session(request: Request) -> Response:
            body = await server._body(request)
            kwargs = body.get("kwargs") or {}
            if not isinstance(kwargs, dict):
                raise BadRequestError("`kwargs` must be an object of keyword arguments for the environment's factory")
            return json_response(await server.open(kwargs), 201)

        async def reset(request: Request) -> Response:
            body = await server._body(request)
            seed, options = server.reset_args(body)
            return json_response(await server.reset(request.path_params["sid"], seed, options))

        async def step(request: Request) -> Response:
            body = await server._body(request)
            if "action" not in body:
                raise BadRequestError("the body needs `action`: the assistant's message text")
            return json_response(await server.step(request.path_params["sid"], body["action"]))

        async def batch(request: Request) -> Response:
            body = await server._body(request, scale=BATCH_BODY_SCALE)
            calls = body.get("calls")
            if not isinstance(calls, list) or not calls:
                raise BadRequestError("the body needs `calls`: a non-empty list of reset and step calls")
            if len(calls) > server.config.max_sessions:
                raise BadRequestError(f"at most {server.config.max_sessions} calls per batch")

            if len(calls) == 1:  # nothing to stream: one line, sent whole
                line = _answer_line(0, *await server.call(calls[0]))
                return Response(line, media_type="application/x-ndjson")

            async def lines():
                # Answers stream back as calls finish (those done together in one chunk): a slow or
                # hung step delays only itself.
                ready: asyncio.Queue[bytes] = asyncio.Queue()

                def put(i: int, status: int, answer: dict[str, Any]) -> None:
                    ready.put_nowait(_answer_line(i, status, answer))

                def step_done(i: int, action: Any, job: _Job, _: asyncio.Future) -> None:
                    try:
                        put(i, 200, server.finish_step(job, action))
                    except BaseException as exc:
                        put(i, *answer_error(exc))

                async def answer_into_queue(i: int, call: Any) -> None:
                    put(i, *await server.call(call))

                # Steps, nearly every call, go straight to the dispatcher with a callback for their
                # answer; resets and malformed calls take the general path, a task each.
                pending = []
                for i, call in enumerate(calls):
                    if type(call) is dict and call.get("op") == "step" and type(call.get("session")) is str and "action" in call:
                        try:
                            _, job = server.start_step(call["session"], call["action"])
                        except Exception as exc:
                            put(i, *answer_error(exc))
                            continue
                        job.future.add_done_callback(functools.partial(step_done, i, call["action"], job))
                    else:
                        pending.append(asyncio.ensure_future(answer_into_queue(i, call)))
                try:
                    left = len(calls)
                    while left:
                        chunk = [await ready.get()]
                        while not ready.empty():
                            chunk.append(ready.get_nowait())
                        left -= len(chunk)
                        yield b"".join(chunk)
                finally:
                    for task in pending:  # the client went away: its calls still finish in the server
                        if not task.done():
                            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

            return StreamingResponse(lines(), media_type="application/x-ndjson")

        async def delete(request: Request) -> Response:
            await server.close_session(request.path_params["sid"])
            return Response(status_code=204)

        async def http_error(request: Request, exc: Exception) -> Response:
            where = f"{request.method} {request.url.path}"
            error: EnvhubError
            if getattr(exc, "status_code", None) == 404:
                error = NotFoundError(f"{where}: no such route")
            elif getattr(exc, "status_code", None) == 405:
                error = MethodNotAllowedError(f"{where}: the route does not take this method")
            else:
                error = BadRequestError(f"{where}: the body is not the JSON the route expects")
            status, body = to_body(error)
            return json_response(body, status)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette):
            if server.config.idle_timeout_s:
                server._reaper = asyncio.create_task(server._reap_forever())
            try:
                yield
            finally:
                if server._reaper is not None:
                    server._reaper.cancel()
                for session in list(server.sessions.values()):
                    server._dispose(session)
                server.sessions.clear()

        routes = [
            Route("/healthz", handler(healthz), methods=["GET"]),
            Route("/v1/info", handler(info), methods=["GET"]),
            Route("/openapi.json", handler(openapi), methods=["GET"]),
            Route("/v1/sessions", handler(open_session), methods=["POST"]),
            Route("/v1/sessions/{sid}/reset", handler(reset), methods=["POST"]),
            Route("/v1/sessions/{sid}/step", handler(step), methods=["POST"]),
            Route("/v1/sessions/{sid}", handler(delete), methods=["DELETE"]),
            Route("/v1/batch", handler(batch), methods=["POST"]),
            *openenv_routes(server),  # OpenEnv's protocol beside envhub's (openenv.py)
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)


#: A batch body may be this many times ``max_body_bytes`` (each of its actions is still bounded).
BATCH_BODY_SCALE = 4


def _answer_line(i: int, status: int, answer: dict[str, Any]) -> bytes:
    """One line of a batch's answer: call ``i``'s HTTP status and body."""
    return _json.dumps({"i": i, "status": status, "body": answer}, _json.plain) + b"\n"


def answer_error(exc: BaseException, *, where: str = "batch call") -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for an exception raised while answering a call."""
    if not isinstance(exc, EnvhubError):  # a bug here or a non-envhub error escaping the env
        log.error("internal error on %s", where, exc_info=exc)
    return to_body(exc)


@dataclass(eq=False)
class _Job:
    fn: Callable[[], Any]
    future: asyncio.Future
    session: Session
    #: What the call is (construction, reset, step), for its timeout's message.
    where: str
    submitted: float
    #: ``started`` (a worker took it) and ``dropped`` (its caller timed out) change under ``lock``.
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: bool = False
    dropped: bool = False
    stuck: bool = False
    #: For a step through ChatEnv's own step: the environment, whose conversation gives the delta.
    delta_of: ChatEnv | None = None


@dataclass(eq=False)
class _Runner:
    job: _Job | None = None
    started: float = 0.0
    #: Finished calls not yet delivered to their callers (the runner adds, the loop takes).
    done: list[tuple[_Job, bool, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Dispatcher:
    """Runs environment calls on the pool's threads, many calls per hand-off between threads.

    Calls queued in one event-loop tick go to one runner thread, which takes them one after another
    and posts their results back in groups; handing each call to a thread on its own costs more
    than an environment's step. When a call has run for :attr:`HANDOFF_S` while others wait, another
    runner takes the rest, so a slow or hung call delays the others by about that much at most.
    """

    HANDOFF_S = 0.02
    POST_EVERY_S = 0.002

    def __init__(self, server: SessionServer) -> None:
        self._server = server
        self._queue: collections.deque[_Job] = collections.deque()
        self._runners: set[_Runner] = set()
        self._kick_scheduled = False
        self._watchdog: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, fn: Callable[[], Any], session: Session, where: str, *, delta_of: ChatEnv | None = None) -> _Job:
        if self._server.degraded:  # no thread left to run it beside the stuck ones
            raise self._server._stuck_error()
        loop = self._loop = asyncio.get_running_loop()
        job = _Job(fn, loop.create_future(), session, where, time.monotonic(), delta_of=delta_of)
        self._queue.append(job)
        if not self._kick_scheduled:
            self._kick_scheduled = True
            loop.call_soon(self._kick)
        return job

    def _kick(self) -> None:
        self._kick_scheduled = False
        if self._queue and not self._runners:
            self._start_runner()

    def _start_runner(self) -> None:
        runner = _Runner()
        self._runners.add(runner)
        self._server._executor.submit(self._run_jobs, runner)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    def _run_jobs(self, runner: _Runner) -> None:
        """A runner thread: take queued calls until none is left, posting results in groups.

        Results wait in ``runner.done`` for at most :attr:`POST_EVERY_S`, or until the queue is
        empty; the watchdog also collects them while the runner is inside a long call.
        """
        loop = self._loop
        assert loop is not None
        posted = time.monotonic()
        while True:
            try:
                job = self._queue.popleft()
            except IndexError:
                break
            with job.lock:
                if job.dropped:  # its caller timed out while it waited: never run it
                    continue
                job.started = True
            runner.started, runner.job = time.monotonic(), job
            try:
                result = (job, True, job.fn())
            except BaseException as exc:  # handed to the caller, as run_in_executor would
                result = (job, False, exc)
            runner.job = None
            with runner.lock:
                runner.done.append(result)
            now = time.monotonic()
            if now - posted >= self.POST_EVERY_S or not self._queue:
                loop.call_soon_threadsafe(self._collect, runner)
                posted = now
        loop.call_soon_threadsafe(self._collect, runner, True)

    def _collect(self, runner: _Runner, finished: bool = False) -> None:
        with runner.lock:
            results, runner.done = runner.done, []
        self._deliver(results, runner if finished else None)

    def _deliver(self, results: list[tuple[_Job, bool, Any]], finished: _Runner | None = None) -> None:
        for job, ok, value in results:
            if job.stuck:
                self._server._hung = max(0, self._server._hung - 1)
            if job.future.done():  # its caller gave up (timeout)
                continue
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)
        if finished is not None:
            self._runners.discard(finished)
            if self._queue and not self._runners:  # queued while that runner was finishing
                self._start_runner()

    async def _watch(self) -> None:
        """While calls wait or run: time out calls past the step timeout, and start another runner
        when every runner is stuck in a long call."""
        server = self._server
        while self._runners:
            await asyncio.sleep(self.HANDOFF_S)
            for runner in list(self._runners):  # results finished before a long call
                if runner.done:
                    self._collect(runner)
            now = time.monotonic()
            cutoff = now - server.step_timeout_s
            # Queued calls first (a copy: runners pop from the left meanwhile), then running ones.
            late = [job for job in tuple(self._queue) if job.submitted <= cutoff]
            late += [job for r in self._runners if (job := r.job) is not None and job.submitted <= cutoff]
            for job in late:
                if not job.future.done():
                    server._time_out(job)
            busy = [r for r in self._runners if r.job is not None and now - r.started >= self.HANDOFF_S]
            working = len(self._runners) - server._hung  # runners stuck past a timeout do not count
            if self._queue and len(busy) == len(self._runners) and working < server.config.threads:
                self._start_runner()


def _rubric_info(env: ChatEnv) -> dict[str, Any]:
    rubric = getattr(env, "rubric", None)
    if rubric is None:
        return {"hash": None, "name": None, "criteria": []}
    return {"hash": rubric.hash, "name": getattr(rubric, "name", "rubric"), "criteria": rubric.describe()}


def _close_quietly(env: ChatEnv) -> None:
    with contextlib.suppress(Exception):
        env.close()
