"""The session protocol between ``envhub serve`` and :mod:`envhub.runtime.client`: routes, codes, errors.

Every body is JSON. Every error is ``{"error": {"code", "message", "hint", "fields"}}`` with one of the
stable codes of :data:`CODES`; :func:`error_from_body` turns it back into the same
:mod:`envhub.errors` class on the client, so callers catch remote and in-process errors alike.

Routes (``PROTOCOL_VERSION`` 1)::

    GET    /healthz                          {"status": "ok", "sessions": n}
    GET    /v1/info                          identity, manifest, max_turns, rubric {hash, criteria}, limits
    GET    /openapi.json                     this protocol as an OpenAPI 3.1 document
    POST   /v1/sessions                      {"kwargs": {...}}        -> {"session": id, "max_turns": n}
    POST   /v1/sessions/{id}/reset           {"seed": int?, "options": {...}?} -> {"observation": [...], "info": {...}}
    POST   /v1/sessions/{id}/step            {"action": str}          -> {"append": [...] | "observation": [...],
                                                                            "length": n, "reward", "terminated",
                                                                            "truncated", "info"}
    DELETE /v1/sessions/{id}                 204
    POST   /v1/batch                         {"calls": [{"op": "reset"|"step", "session": id, ...}, ...]}
                                             -> 200, NDJSON lines {"i", "status", "body"}, streamed as
                                                each call finishes (body: what its own route answers)

``step`` answers with a delta: ``append`` holds the messages that follow the assistant's action, and
``length`` the conversation's new length, so neither side resends the whole conversation. When an
environment rewrote earlier messages, the answer carries the whole ``observation`` instead.

``batch`` is how :class:`~envhub.runtime.client.AsyncRemoteEnv` sends the resets and steps that many
environments issue in one event-loop tick: one request, answers streamed back one line per call as
each finishes, so a slow step delays only its own caller. Calls of one batch fail one by one.
"""

from __future__ import annotations

from typing import Any

from envhub import errors as E

PROTOCOL_VERSION = 1

#: code -> (HTTP status, meaning). Codes are stable: clients match on them, never on messages.
CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "the body is not the JSON the route expects"),
    "invalid_action": (422, "the action is not a str, or is over the length limit"),
    "invalid_option": (422, "a reset option or constructor argument the environment does not accept"),
    "task_not_found": (404, "reset(options={'task_id': ...}) names a task the environment does not have"),
    "unknown_session": (404, "the session id is unknown, closed, or was reaped after being idle"),
    "not_found": (404, "no such route"),
    "method_not_allowed": (405, "the route does not take this method"),
    "episode_ended": (409, "step after the episode ended, or before reset"),
    "session_busy": (409, "another call on the same session is still running"),
    "body_too_large": (413, "the request body is over the server's limit"),
    "environment_failure": (500, "the environment's own code raised; the episode has ended"),
    "criterion_error": (500, "a rubric criterion raised or returned an invalid score"),
    "entrypoint_error": (500, "the environment's factory failed for these arguments"),
    "internal": (500, "a bug in the server; the message says what"),
    "capacity": (503, "the server holds its maximum number of sessions"),
    "step_timeout": (504, "reset or step ran past the step timeout; the episode has ended"),
}


def error_body(code: str, message: str, *, hint: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "hint": hint, "fields": fields}}


def error_to_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for an exception raised while serving a request."""
    code, fields = _code_of(exc)
    hint = getattr(exc, "hint", None)
    return CODES[code][0], error_body(code, str(exc), hint=hint, **fields)


def _code_of(exc: BaseException) -> tuple[str, dict[str, Any]]:
    # Most specific first: StepTimeoutError is an EnvironmentFailure, TaskNotFoundError a LookupError.
    if isinstance(exc, E.StepTimeoutError):
        return "step_timeout", {"env": exc.env, "where": exc.where, "timeout_s": exc.timeout_s}
    if isinstance(exc, E.EnvironmentFailure):
        return "environment_failure", {"env": exc.env, "where": exc.where}
    if isinstance(exc, E.CriterionError):
        return "criterion_error", {"env": exc.env, "criterion": exc.criterion, "reason": exc.reason}
    if isinstance(exc, E.InvalidActionError):
        return "invalid_action", {"env": exc.env}
    if isinstance(exc, E.InvalidOptionError):
        return "invalid_option", {"env": exc.env, "option": exc.option}
    if isinstance(exc, E.TaskNotFoundError):
        return "task_not_found", {"env": exc.env, "task_id": exc.task_id, "suggestions": exc.suggestions}
    if isinstance(exc, E.EpisodeEndedError):
        return "episode_ended", {"env": exc.env}
    if isinstance(exc, E.SessionNotFoundError):
        return "unknown_session", {"session": exc.session}
    if isinstance(exc, E.CapacityError):
        return "capacity", {"limit": exc.limit}
    if isinstance(exc, E.BodyTooLargeError):
        return "body_too_large", {"limit": exc.limit, "size": exc.size}
    if isinstance(exc, E.EntrypointError):
        return "entrypoint_error", {"env": exc.env, "entrypoint": exc.entrypoint}
    return "internal", {"type": type(exc).__name__}


def _message_of(body: dict[str, Any]) -> str:
    return str(body.get("message") or "")


def error_from_body(status: int, payload: Any, *, env: str) -> E.EnvhubError:
    """The :mod:`envhub.errors` instance for an error answer (a :class:`RemoteError` when unknown).

    Errors are rebuilt from their typed fields, then given the server's exact message, so a remote
    error reads the same as the in-process one.
    """
    body = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        return E.RemoteError("bad_response", f"environment server answered HTTP {status} without an error body", status=status)
    code = body["code"]
    f = body.get("fields") if isinstance(body.get("fields"), dict) else {}
    env = f.get("env") or env
    message = _message_of(body)
    exc: E.EnvhubError
    try:
        if code == "step_timeout":
            exc = E.StepTimeoutError(env, f.get("where", "step"), float(f.get("timeout_s", 0)))
        elif code == "environment_failure":
            exc = E.EnvironmentFailure(env, f.get("where", "step"), message)
        elif code == "criterion_error":
            exc = E.CriterionError(f.get("criterion", "?"), f.get("reason", message), env=env)
        elif code == "invalid_action":
            exc = E.InvalidActionError(env, message)
        elif code == "invalid_option":
            exc = E.InvalidOptionError(env, f.get("option", "?"), message)
        elif code == "task_not_found":
            exc = E.TaskNotFoundError(env, f.get("task_id", "?"), f.get("suggestions") or ())
        elif code == "episode_ended":
            exc = E.EpisodeEndedError(env, message)
        elif code == "unknown_session":
            exc = E.SessionNotFoundError(f.get("session", "?"))
        elif code == "capacity":
            exc = E.CapacityError(int(f.get("limit", 0)))
        elif code == "body_too_large":
            exc = E.BodyTooLargeError(int(f.get("limit", 0)), size=f.get("size"))
        elif code == "entrypoint_error":
            exc = E.EntrypointError(env, f.get("entrypoint", "?"), message)
        else:
            exc = E.RemoteError(code, message, status=status, hint=body.get("hint"))
    except (TypeError, ValueError):
        exc = E.RemoteError(code, message, status=status, hint=body.get("hint"))
    if message:
        exc.args = (message,)
        if isinstance(exc, ImportError):  # ImportError prints its `msg`, not its args
            exc.msg = message
    if body.get("hint"):
        exc.hint = body["hint"]
    return exc
