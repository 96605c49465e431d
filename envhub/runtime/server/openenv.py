"""OpenEnv's protocol, served by the session server beside envhub's own ``/v1`` routes.

Any trainer that integrates OpenEnv (TRL, SkyRL, ART, ...) reaches an envhub environment with
OpenEnv's own clients (``GenericEnvClient``, ``MCPToolClient``, sync or async). Routes and messages
follow ``openenv`` 0.10 (``openenv.core.env_server.http_server`` and ``openenv.core.env_client``);
that package is not needed to serve them::

    WS   /ws        a session per connection, or the MCP session named by ``?session_id=``;
                    {"type": "reset"|"step"|"state"|"mcp"|"close", "data": {...}}, each answered
                    in order by {"type": "observation"|"state"|"mcp"|"error", "data": {...}}
    GET  /health    {"status": "healthy"}
    GET  /metadata  name, description, README, version and author (the namespace)
    GET  /schema    JSON Schemas of the action, the observation and the state
    POST /reset     the first observation of a fresh instance; with "session_id", that session's
    POST /step      needs "session_id": OpenEnv's HTTP routes keep no episode of their own
    GET  /state     ``?session_id=`` for a session's state, else a fresh instance's
    POST /mcp       JSON-RPC 2.0: tools/list, tools/call, openenv/session/create and /close
    WS   /mcp       the same JSON-RPC over a WebSocket, a session per connection

An envhub episode in OpenEnv's terms: the action is ``{"message": the assistant's text}``; the
observation's ``messages`` are what the environment answered (at reset, the first messages; when
the environment rewrote earlier messages, the whole conversation, with ``full`` true); ``reward``
is envhub's step reward, so on the last step the rubric's total; ``done`` is terminated or
truncated; ``metadata`` is the step's info, with ``terminated``, ``truncated`` and, on the last
step, the rubric's breakdown under ``rubric``. The state holds the whole conversation.

Seeds, reset options (``task_id``, ``split``), the step timeout, body limits, capacity and reaping
are the session server's own, and so are the errors: an error frame is
``{"type": "error", "data": {"message", "code": OpenEnv's code, "error": envhub's error body}}``,
which OpenEnv's client raises as its ``RuntimeError``. A socket answers its messages one at a time
and in order; a message may carry a ``request_id``, echoed in its answer (OpenEnv's messages have
no id of their own; its client drops a socket whose answer timed out, openenv issue #1143, and the
server then closes that session). JSON-RPC answers carry their request's ``id``.

Environments that declare ``tools`` (a class attribute: ``{"name", "description"}`` with the
arguments' JSON Schema as ``input_schema`` or OpenAI's ``parameters``) get them listed by
``tools/list``; ``tools/call`` is one assistant turn whose text is the call in the environment's
format (``tool_call_template``, default ``<tool>{call}</tool>``, ``{call}`` being ``{"name": ...,
"arguments": ...}`` as JSON), answered with the environment's reply and the step's reward.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from envhub import _json
from envhub.errors import (
    BadRequestError,
    BodyTooLargeError,
    CapacityError,
    EntrypointError,
    EnvhubError,
    EnvironmentFailure,
    EpisodeEndedError,
    InvalidActionError,
    InvalidOptionError,
    SessionNotFoundError,
)
from envhub.runtime.server.protocol import error_headers
from envhub.runtime.server.requests import checked_options, checked_seed, parse_json, read_body
from envhub.wire import to_body

if TYPE_CHECKING:
    from envhub.runtime.server.app import SessionServer

log = logging.getLogger("envhub.runtime.server")

#: OpenEnv's names (``openenv.core.env_server.mcp_types``) that no tool may take.
RESERVED_TOOL_NAMES = frozenset({"reset", "step", "state", "close"})
DEFAULT_TOOL_CALL_TEMPLATE = "<tool>{call}</tool>"

# JSON-RPC 2.0 error codes, as OpenEnv's JsonRpcErrorCode names them.
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR, SERVER_ERROR = (
    -32700, -32600, -32601, -32602, -32603, -32000,
)


def openenv_routes(server: SessionServer) -> list[BaseRoute]:
    """OpenEnv's routes for ``server``, to mount beside its own."""
    protocol = OpenEnvProtocol(server)
    http = protocol.http_endpoint
    return [
        Route("/health", http(protocol.health), methods=["GET"]),
        Route("/metadata", http(protocol.metadata), methods=["GET"]),
        Route("/schema", http(protocol.schema), methods=["GET"]),
        Route("/reset", http(protocol.http_reset), methods=["POST"]),
        Route("/step", http(protocol.http_step), methods=["POST"]),
        Route("/state", http(protocol.http_state), methods=["GET"]),
        Route("/mcp", http(protocol.http_mcp), methods=["POST"]),
        WebSocketRoute("/mcp", protocol.ws_mcp),
        WebSocketRoute("/ws", protocol.ws_session),
    ]


class _RpcError(Exception):
    """A JSON-RPC error answer: its code, message and data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.data = code, data


def _ws_code(exc: BaseException) -> str:
    """OpenEnv's WSErrorCode for an error answered on ``/ws``."""
    if isinstance(exc, CapacityError):
        return "CAPACITY_REACHED"
    if isinstance(exc, EntrypointError):
        return "FACTORY_ERROR"
    if isinstance(exc, SessionNotFoundError):
        return "SESSION_ERROR"
    if isinstance(exc, (BadRequestError, InvalidActionError, InvalidOptionError, BodyTooLargeError)):
        return "VALIDATION_ERROR"
    return "EXECUTION_ERROR"


def _error_data(exc: BaseException, ws_code: str | None = None) -> dict[str, Any]:
    """An error frame's ``data``: OpenEnv's message and code, and envhub's own error body."""
    if not isinstance(exc, EnvhubError):  # a bug here, or a non-envhub error escaping the env
        log.error("internal error on the OpenEnv protocol", exc_info=exc)
    status, body = to_body(exc)
    error = body["error"]
    return {"message": f"{error['code']}: {error['message']}", "code": ws_code or _ws_code(exc), "status": status, "error": error}


def _dumps(payload: Any) -> str:
    return _json.dumps(payload, _json.plain).decode()


def _json_response(payload: Any, status: int = 200, *, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.dumps(payload, _json.plain), status_code=status, media_type="application/json", headers=headers)


def _observation(messages: list, *, full: bool, reward: float | None, done: bool, info: dict[str, Any]) -> dict[str, Any]:
    """OpenEnv's serialized observation (``serialize_observation``): metadata both in the
    observation and beside it, as OpenEnv's server sends it."""
    return {
        "observation": {"messages": messages, "full": full, "metadata": info},
        "reward": reward,
        "done": done,
        "metadata": info,
    }


def _step_observation(answer: dict[str, Any]) -> dict[str, Any]:
    """The OpenEnv observation of an answer of :meth:`SessionServer.step`."""
    info = answer["info"]
    terminated, truncated = answer["terminated"], answer["truncated"]
    info["terminated"], info["truncated"] = terminated, truncated
    full = "append" not in answer
    messages = answer["observation"] if full else answer["append"]
    return _observation(messages, full=full, reward=answer["reward"], done=terminated or truncated, info=info)


def _reset_args(env: str, data: Any) -> tuple[int | None, dict[str, Any] | None, str | None]:
    """(seed, envhub reset options, episode_id) of OpenEnv's reset data: ``seed`` and
    ``episode_id`` are OpenEnv's; ``options`` and any other key are envhub's reset options."""
    if data is None:
        return None, None, None
    if not isinstance(data, dict):
        raise BadRequestError(f"reset data must be an object, got {type(data).__name__}")
    data = dict(data)
    seed = checked_seed(data.pop("seed", None))
    episode_id = data.pop("episode_id", None)
    if episode_id is not None and (not isinstance(episode_id, str) or len(episode_id) > 255):
        raise BadRequestError("`episode_id` must be a string of at most 255 characters")
    options = data.pop("options", None)
    if options is not None and not isinstance(options, dict):
        raise BadRequestError("`options` must be an object or null")
    options = {**(options or {}), **data}  # task_id, split, and what the environment will refuse by name
    return seed, checked_options(env, options or None), episode_id


def _message_of(action: Any, env: str) -> str:
    """The assistant's text in OpenEnv's action ``{"message": str, "metadata": {...}}``."""
    if not isinstance(action, dict):
        raise InvalidActionError(env, f'an action is an object {{"message": str}}, got {type(action).__name__}')
    message = action.get("message")
    if not isinstance(message, str):
        raise InvalidActionError(env, '`message` must be the assistant\'s message as a str')
    extra = set(action) - {"message", "metadata"}
    if extra:
        raise InvalidActionError(env, f"unknown action field(s) {sorted(extra)}; an action is {{\"message\": str}}")
    return message


class OpenEnvProtocol:
    """OpenEnv's routes over one :class:`SessionServer`'s sessions."""

    def __init__(self, server: SessionServer) -> None:
        self.server = server
        self.env = server.manifest.ref
        #: Sessions with a WebSocket attached (MCP sessions reached from /ws?session_id=).
        self._attached: set[str] = set()
        #: Attached sessions asked to close; closed when their WebSocket goes.
        self._closing: set[str] = set()
        #: OpenEnv's episode id of each session's current episode.
        self._episode_ids: dict[str, str] = {}
        self._tools: list[dict[str, Any]] | None = None
        self._tool_template = DEFAULT_TOOL_CALL_TEMPLATE
        self._schemas: dict[str, Any] | None = None

    # --- episodes ---------------------------------------------------------------------------------

    async def reset(self, sid: str, data: Any) -> dict[str, Any]:
        seed, options, episode_id = _reset_args(self.env, data)
        answer = await self.server.reset(sid, seed, options)
        self._episode_ids[sid] = episode_id or uuid.uuid4().hex
        return _observation(answer["observation"], full=True, reward=None, done=False, info=answer["info"])

    async def step(self, sid: str, action: Any) -> dict[str, Any]:
        kind = action.get("type") if isinstance(action, dict) else None
        if kind == "list_tools":  # OpenEnv's MCP actions, accepted by its step as by ours
            tools = await self.tools()
            return {"observation": {"tools": tools, "metadata": {}}, "reward": None, "done": False}
        if kind == "call_tool":
            name, arguments = action.get("tool_name"), action.get("arguments") or {}
            return self._tool_observation(name, await self.call_tool(sid, name, arguments))
        return _step_observation(await self.server.step(sid, _message_of(action, self.env)))

    def state(self, sid: str) -> dict[str, Any]:
        """OpenEnv's state (``episode_id``, ``step_count``) with the episode's task and conversation."""
        session = self.server._session(sid)  # unknown or busy sessions are refused as on /v1
        episode = session.env.episode if session.env is not None else None
        state: dict[str, Any] = {"episode_id": self._episode_ids.get(sid), "step_count": episode.turn if episode else 0}
        if episode is not None:
            state.update(
                task_id=episode.task_id,
                split=episode.split,
                max_turns=episode.max_turns,
                done=episode.done,
                terminated=episode.terminated,
                truncated=episode.truncated,
                messages=list(episode.messages),
            )
        elif session.abandoned:
            state.update(done=True, ended=session.abandoned)
        return state

    async def _open(self) -> str:
        return (await self.server.open({}))["session"]

    async def _close(self, sid: str) -> None:
        self._episode_ids.pop(sid, None)
        self._closing.discard(sid)
        with contextlib.suppress(SessionNotFoundError):  # reaped, or closed by the other route
            await self.server.close_session(sid)

    # --- tools ------------------------------------------------------------------------------------

    async def tools(self) -> list[dict[str, Any]]:
        """The environment's tools as MCP lists them (read once, off a fresh instance)."""
        if self._tools is None:
            sid = await self._open()
            try:
                env = self.server.sessions[sid].env
                declared = getattr(env, "tools", None) or []
                template = getattr(env, "tool_call_template", DEFAULT_TOOL_CALL_TEMPLATE)
            finally:
                await self._close(sid)
            self._tools = [self._checked_tool(spec) for spec in declared]
            self._tool_template = template
        return self._tools

    def _checked_tool(self, spec: Any) -> dict[str, Any]:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or spec["name"] in RESERVED_TOOL_NAMES:
            raise EnvironmentFailure(
                self.env, "tools", f'each tool must be {{"name", "description", "input_schema"}}, named other than {sorted(RESERVED_TOOL_NAMES)}'
            )
        # MCP's input_schema (inputSchema on the wire), or OpenAI's function `parameters`: the same JSON Schema.
        schema = spec.get("input_schema") or spec.get("inputSchema") or spec.get("parameters") or {"type": "object"}
        return {"name": spec["name"], "description": str(spec.get("description", "")), "inputSchema": schema}

    async def call_tool(self, sid: str, name: Any, arguments: Any) -> dict[str, Any]:
        """One assistant turn that calls tool ``name``: the step's answer, as an OpenEnv observation.

        A session that has not started an episode starts one (a reset without a seed): MCP's
        callers, ``/mcp`` among them, have no reset of their own.
        """
        if not isinstance(name, str) or not name:
            raise InvalidActionError(self.env, "Missing 'name' in params: the tool to call")
        if not isinstance(arguments, dict):
            raise InvalidActionError(self.env, "'arguments' must be an object")
        if name not in {tool["name"] for tool in await self.tools()}:
            raise InvalidActionError(self.env, f"Tool not found: {name}")
        env = self.server._session(sid).env
        if env is not None and env.episode is None:
            await self.reset(sid, None)
        call = json.dumps({"name": name, "arguments": arguments})
        return _step_observation(await self.server.step(sid, self._tool_template.replace("{call}", call)))

    @staticmethod
    def _tool_result(observation: dict[str, Any]) -> dict[str, Any]:
        """A tools/call result in MCP's shape (``content``, ``data``, ``isError``) with the step's
        reward, done and metadata: the tool messages' text, or the reply's when it has none."""
        messages = observation["observation"]["messages"]
        said = [m for m in messages if m["role"] == "tool"] or [m for m in messages if m["role"] != "assistant"]
        text = "\n".join(m["content"] for m in said)
        return {
            "content": [{"type": "text", "text": text}],
            "data": text,
            "isError": False,
            "messages": messages,
            "reward": observation["reward"],
            "done": observation["done"],
            "metadata": observation["metadata"],
        }

    def _tool_observation(self, name: str, observation: dict[str, Any]) -> dict[str, Any]:
        """OpenEnv's CallToolObservation (``tool_name``, ``result``, ``error``) for a step."""
        observation["observation"] = {"tool_name": name, "result": self._tool_result(observation), "error": None,
                                      "metadata": observation["metadata"]}
        return observation

    # --- JSON-RPC (MCP) ---------------------------------------------------------------------------

    async def jsonrpc(self, request: Any, *, bound: str | None = None) -> dict[str, Any]:
        """The JSON-RPC answer to ``request``; ``bound`` is the session of the WebSocket it came on."""
        rid = request.get("id") if isinstance(request, dict) else None
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            rid = None
        try:
            if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
                raise _RpcError(INVALID_REQUEST, 'Invalid Request: expected {"jsonrpc": "2.0", "method": str, "params": {...}, "id": ...}')
            params = request.get("params", {})
            if not isinstance(params, dict):
                raise _RpcError(INVALID_PARAMS, "Params must be an object")
            result = await self._rpc(request["method"], params, bound)
        except _RpcError as exc:
            return _rpc_error(rid, exc.code, str(exc), exc.data)
        except Exception as exc:  # envhub's errors, with envhub's body as the error's data
            data = _error_data(exc)
            if isinstance(exc, (InvalidActionError, SessionNotFoundError)):
                code = INVALID_PARAMS
            elif isinstance(exc, (CapacityError, EntrypointError)):
                code = SERVER_ERROR
            else:
                code = INTERNAL_ERROR
            return _rpc_error(rid, code, data["message"], data)
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    async def _rpc(self, method: str, params: dict[str, Any], bound: str | None) -> Any:
        if method == "openenv/session/create":
            return {"session_id": bound or await self._open()}
        if method == "openenv/session/close":
            target = params.get("session_id")
            if not isinstance(target, str) or not target:
                raise _RpcError(INVALID_PARAMS, "Invalid params - 'session_id' is required")
            if target == bound:
                raise _RpcError(INVALID_REQUEST, "Cannot close active WebSocket-managed session via MCP method")
            if target not in self.server.sessions:
                raise _RpcError(INVALID_PARAMS, f"Unknown session_id: {target}")
            if target in self._attached:  # closed when its WebSocket goes
                self._closing.add(target)
                return {"session_id": target, "closed": False, "closing": True}
            await self._close(target)
            return {"session_id": target, "closed": True}
        if method == "tools/list":
            return {"tools": await self.tools()}
        if method == "tools/call":
            sid = bound or params.get("session_id")
            if sid is not None and (not isinstance(sid, str) or sid not in self.server.sessions):
                raise _RpcError(INVALID_PARAMS, f"Unknown session_id: {sid}")
            if sid is not None:
                return self._tool_result(await self.call_tool(sid, params.get("name"), params.get("arguments", {})))
            sid = await self._open()  # no session: a one-turn episode of its own
            try:
                return self._tool_result(await self.call_tool(sid, params.get("name"), params.get("arguments", {})))
            finally:
                await self._close(sid)
        raise _RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")

    # --- HTTP -------------------------------------------------------------------------------------

    def http_endpoint(self, fn: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        """An endpoint answering ``fn``'s result as JSON, and errors as envhub's error body under
        its status (with FastAPI's ``detail`` beside it, which OpenEnv's HTTP callers read)."""

        async def endpoint(request: Request) -> Response:
            try:
                return _json_response(await fn(request))
            except Exception as exc:
                data = _error_data(exc)
                return _json_response({"detail": data["message"], "error": data["error"]}, data["status"], headers=error_headers(exc))

        return endpoint

    async def health(self, request: Request) -> dict[str, Any]:
        return {"status": "healthy"}

    async def metadata(self, request: Request) -> dict[str, Any]:
        manifest = self.server.manifest
        readme = Path(self.server.folder) / "README.md"
        return {
            "name": manifest.full_name,
            "description": manifest.description,
            "readme_content": readme.read_text(encoding="utf-8") if readme.is_file() else None,
            "version": manifest.version,
            "author": manifest.namespace,
            "documentation_url": None,
        }

    async def schema(self, request: Request) -> dict[str, Any]:
        if self._schemas is None:
            self._schemas = schemas(self.server.manifest.ref)
        return self._schemas

    async def http_reset(self, request: Request) -> dict[str, Any]:
        body = await self.server._body(request)
        sid = body.pop("session_id", None)
        if sid is not None:
            return await self.reset(self._known(sid), body)
        sid = await self._open()  # OpenEnv's HTTP reset: a fresh instance, closed after
        try:
            return await self.reset(sid, body)
        finally:
            await self._close(sid)

    async def http_step(self, request: Request) -> dict[str, Any]:
        body = await self.server._body(request)
        if "action" not in body:
            raise BadRequestError('the body needs `action`: {"message": the assistant\'s text}')
        sid = body.get("session_id")
        if sid is None:
            raise EpisodeEndedError(
                self.env,
                "a step over HTTP needs the `session_id` of an episode (OpenEnv's HTTP routes keep none); "
                "play episodes over the WebSocket /ws, or open a session with POST /mcp openenv/session/create",
            )
        answer = await self.step(self._known(sid), body["action"])
        if body.get("request_id") is not None:
            answer["metadata"] = {**(answer.get("metadata") or {}), "request_id": body["request_id"]}
        return answer

    async def http_state(self, request: Request) -> dict[str, Any]:
        sid = request.query_params.get("session_id")
        if sid is None:  # OpenEnv's HTTP state: a fresh instance's, before any reset
            return {"episode_id": None, "step_count": 0}
        return self.state(sid)

    async def http_mcp(self, request: Request) -> dict[str, Any]:
        config = self.server.config
        try:
            raw = await read_body(request, limit=config.max_body_bytes, timeout_s=config.body_timeout_s)  # or 408
        except BodyTooLargeError as exc:
            return _rpc_error(None, INVALID_REQUEST, str(exc), _error_data(exc))
        try:
            message = parse_json(raw)
        except BadRequestError as exc:
            return _rpc_error(None, PARSE_ERROR, f"Parse error: {exc}")
        return await self.jsonrpc(message)

    def _known(self, sid: Any) -> str:
        if not isinstance(sid, str) or sid not in self.server.sessions:
            raise SessionNotFoundError(str(sid))
        return sid

    # --- WebSockets -------------------------------------------------------------------------------

    async def ws_session(self, websocket: WebSocket) -> None:
        """``/ws``: OpenEnv's session endpoint."""
        await websocket.accept()
        requested = websocket.query_params.get("session_id")
        try:
            sid = await self._open() if requested is None else self._attach(requested)
        except Exception as exc:
            data = _error_data(exc)
            if isinstance(exc, CapacityError):
                data.update(active_sessions=len(self.server.sessions), max_sessions=self.server.config.max_sessions)
            await _refuse(websocket, {"type": "error", "data": data})
            return
        try:
            await _converse(websocket, lambda raw: self._answer(sid, raw))
        finally:
            if requested is not None:  # an MCP session's: it outlives the socket unless asked to close
                self._attached.discard(sid)
            if requested is None or sid in self._closing:
                await self._close(sid)
            with contextlib.suppress(Exception):
                await websocket.close()

    def _attach(self, sid: str) -> str:
        if sid not in self.server.sessions:
            raise SessionNotFoundError(sid)
        if sid in self._attached:
            raise BadRequestError(f"Session {sid} already has an attached WebSocket")
        self._attached.add(sid)
        return sid

    async def _answer(self, sid: str, raw: str | bytes) -> str | None:
        """The answer frame to one ``/ws`` message (None for ``close``)."""
        request_id = None
        try:
            if len(raw) > self.server.config.max_body_bytes:
                raise BodyTooLargeError(self.server.config.max_body_bytes, size=len(raw))
            try:
                message = parse_json(raw, what="the message")
            except BadRequestError as exc:
                return _dumps({"type": "error", "data": _error_data(BadRequestError(f"Invalid JSON: {exc}"), "INVALID_JSON")})
            if not isinstance(message, dict):
                raise BadRequestError(f"a message is an object {{\"type\", \"data\"}}, got {type(message).__name__}")
            request_id = message.get("request_id")
            kind = message.get("type")
            if kind == "step":
                if "data" not in message:
                    raise BadRequestError('a step message needs `data`: the action, {"message": str}')
                reply = {"type": "observation", "data": await self.step(sid, message["data"])}
            elif kind == "reset":
                reply = {"type": "observation", "data": await self.reset(sid, message.get("data"))}
            elif kind == "state":
                reply = {"type": "state", "data": self.state(sid)}
            elif kind == "mcp":
                reply = {"type": "mcp", "data": await self.jsonrpc(message.get("data"), bound=sid)}
            elif kind == "close":
                return None
            else:
                err = BadRequestError(f"Unknown message type: {kind}; use reset, step, state, mcp or close")
                reply = {"type": "error", "data": _error_data(err, "UNKNOWN_TYPE")}
        except Exception as exc:
            reply = {"type": "error", "data": _error_data(exc)}
        if request_id is not None:
            reply["request_id"] = request_id
        return _dumps(reply)

    async def ws_mcp(self, websocket: WebSocket) -> None:
        """``/mcp`` over a WebSocket: JSON-RPC on a session of the connection's own."""
        await websocket.accept()
        try:
            sid = await self._open()
        except Exception as exc:
            data = _error_data(exc)
            await _refuse(websocket, _rpc_error(None, SERVER_ERROR, data["message"], data))
            return

        async def answer(raw: str | bytes) -> str:
            try:
                message = parse_json(raw, what="the message")
            except BadRequestError as exc:
                return _dumps(_rpc_error(None, PARSE_ERROR, f"Parse error: {exc}"))
            return _dumps(await self.jsonrpc(message, bound=sid))

        try:
            await _converse(websocket, answer)
        finally:
            await self._close(sid)
            with contextlib.suppress(Exception):
                await websocket.close()


def _rpc_error(rid: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message, "data": data}}


async def _refuse(websocket: WebSocket, frame: dict[str, Any]) -> None:
    """Say why a socket gets no session, and close it (OpenEnv's client reads the frame)."""
    with contextlib.suppress(Exception):
        await websocket.send_text(_dumps(frame))
        await websocket.close()


async def _converse(websocket: WebSocket, answer: Callable[[str | bytes], Awaitable[str | None]]) -> None:
    """Answer a socket's messages one at a time, in order, until it closes or ``answer`` gives None."""
    try:
        while True:
            event = await websocket.receive()
            if event["type"] == "websocket.disconnect":
                return
            raw = event.get("text")
            reply = await answer(raw if raw is not None else event.get("bytes") or b"")
            if reply is None:
                return
            await websocket.send_text(reply)
    except Exception as exc:  # the client went away mid-answer (its receive timed out, say)
        log.debug("OpenEnv WebSocket ended: %r", exc)


# --- schemas ----------------------------------------------------------------------------------------

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
        "content": {"type": "string"},
        "name": {"type": "string", "description": "the tool's name, on tool messages"},
    },
}
_METADATA = {"type": "object", "additionalProperties": True, "default": {}}


def schemas(env_ref: str) -> dict[str, Any]:
    """``GET /schema``: JSON Schemas of the action, the (reset) observation and the state."""
    observation = {
        "title": "EnvhubObservation",
        "type": "object",
        "properties": {
            "done": {"type": "boolean", "default": False, "description": "the episode ended (terminated or truncated)"},
            "reward": {"type": ["number", "null"], "default": None,
                       "description": "the step's reward: on the last step, the rubric's total (its breakdown in metadata.rubric)"},
            "messages": {"type": "array", "items": _MESSAGE,
                         "description": "the messages the environment answered with; the whole conversation when `full`"},
            "full": {"type": "boolean", "description": "`messages` is the whole conversation (at reset, or after a rewrite)"},
            "metadata": {**_METADATA, "description": "the step's info: task_id, turn, terminated, truncated, rubric"},
        },
        "required": ["messages", "full"],
    }
    return {
        "action": {
            "title": "EnvhubAction",
            "description": f"One assistant turn of {env_ref}",
            "type": "object",
            "properties": {
                "message": {"type": "string", "maxLength": 1_000_000, "description": "the assistant's message text"},
                "metadata": _METADATA,
            },
            "required": ["message"],
            "additionalProperties": False,
        },
        "observation": observation,
        "reset_observation": {**observation, "title": "EnvhubResetObservation"},
        "state": {
            "title": "EnvhubState",
            "type": "object",
            "properties": {
                "episode_id": {"type": ["string", "null"], "default": None},
                "step_count": {"type": "integer", "minimum": 0, "default": 0, "description": "assistant turns taken"},
                "task_id": {"type": "string"},
                "split": {"type": "string"},
                "max_turns": {"type": "integer"},
                "done": {"type": "boolean"},
                "terminated": {"type": "boolean"},
                "truncated": {"type": "boolean"},
                "messages": {"type": "array", "items": _MESSAGE, "description": "the whole conversation"},
            },
            "additionalProperties": True,
        },
    }


def openapi_paths(errors: Callable[..., dict[str, Any]], *, any_route: tuple, body: tuple) -> dict[str, Any]:
    """OpenEnv's HTTP routes for the server's OpenAPI document (OpenEnv's validator reads them).

    ``errors`` gives a route's error answers for error classes; ``any_route`` are those of every
    route (a missing token), ``body`` those of reading a body."""
    from envhub import errors as E
    from envhub.runtime.server.requests import MAX_SEED

    episode = (E.SessionNotFoundError, E.SessionBusyError, E.CapacityError, E.EnvironmentFailure, E.StepTimeoutError,
               E.InvalidOptionError, E.EntrypointError, E.EnvhubError, *body)  # fmt: skip

    def route(method: str, summary: str, *kinds: type, request: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        operation = {"summary": summary, "tags": ["OpenEnv"], "responses": {"200": {"description": "OpenEnv's answer"}, **errors(*kinds, *any_route)}}
        if request is not None:
            operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": {"type": "object", "properties": request}}}}
        return {method: {**operation, **extra}}

    seed = {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED}
    return {
        "/health": route("get", "OpenEnv: health ({\"status\": \"healthy\"})"),
        "/metadata": route("get", "OpenEnv: the environment's name, description, README, version"),
        "/schema": route("get", "OpenEnv: JSON Schemas of action, observation and state"),
        "/reset": route("post", "OpenEnv: reset a fresh instance, or the session of `session_id`", E.TaskNotFoundError, *episode,
                        request={"seed": seed, "session_id": {"type": "string"}, "episode_id": {"type": "string"}, "options": {"type": "object"}}),
        "/step": route("post", "OpenEnv: step the session of `session_id`", E.InvalidActionError, E.EpisodeEndedError, E.CriterionError, *episode,
                       request={"action": {"type": "object"}, "session_id": {"type": "string"}, "request_id": {"type": "string"}}),
        "/state": route("get", "OpenEnv: the state of the session of `?session_id=`", E.SessionNotFoundError, E.SessionBusyError,
                        parameters=[{"name": "session_id", "in": "query", "required": False, "schema": {"type": "string"}}]),
        "/mcp": route("post", "OpenEnv: MCP JSON-RPC (tools/list, tools/call, openenv/session/create|close); errors are JSON-RPC's, in a 200",
                      E.RequestTimeoutError),
    }
