"""The session protocol between ``envhub serve`` and :mod:`envhub.runtime.client`: routes, codes, errors.

Every body is JSON. Every error is ``{"error": {"code", "message", "hint", "fields"}}`` with one of the
stable codes of :data:`CODES`, written and read by :mod:`envhub.wire`: the client raises the same
:mod:`envhub.errors` class as the server did, so callers catch remote and in-process errors alike.

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

from envhub import errors as E

PROTOCOL_VERSION = 1
#: Sessions one server holds by default (``--max-sessions``); the runtimes' pools seat no more on one.
MAX_SESSIONS = 4096

#: The errors a session server answers with. Each class carries its stable code and HTTP status;
#: clients match on codes, never on messages. The root's code, ``internal``, answers a bug.
ERRORS: tuple[type[E.EnvhubError], ...] = (
    E.BadRequestError,
    E.InvalidActionError,
    E.InvalidOptionError,
    E.TaskNotFoundError,
    E.SessionNotFoundError,
    E.NotFoundError,
    E.AuthenticationError,
    E.MethodNotAllowedError,
    E.EpisodeEndedError,
    E.SessionBusyError,
    E.BodyTooLargeError,
    E.RequestTimeoutError,
    E.EnvironmentFailure,
    E.CriterionError,
    E.EntrypointError,
    E.EnvhubError,
    E.CapacityError,
    E.StepTimeoutError,
)


def meaning(cls: type[E.EnvhubError]) -> str:
    """What an error's code means, for the OpenAPI document: the first paragraph of its docstring."""
    if cls is E.EnvhubError:
        return "a bug in the server; the message says what"
    text = " ".join((cls.__doc__ or cls.__name__).split("\n\n")[0].split())
    return text.replace("``", "`")


#: code -> (HTTP status, meaning), read off the classes of :data:`ERRORS`.
CODES: dict[str, tuple[int, str]] = {cls.code: (cls.status, meaning(cls)) for cls in ERRORS}


def error_headers(exc: BaseException) -> dict[str, str] | None:
    """HTTP headers that go with an error's answer: when to retry past capacity, and closing a
    connection whose request body never came (its unread rest would be taken for the next request)."""
    if isinstance(exc, E.RequestTimeoutError):
        return {"Connection": "close"}
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, E.CapacityError) and isinstance(retry_after, int):
        return {"Retry-After": str(retry_after)}
    return None
