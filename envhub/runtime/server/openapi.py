"""The session protocol as an OpenAPI 3.1 document, served at ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from envhub import errors as E
from envhub.runtime.server.openenv import openapi_paths
from envhub.runtime.server.protocol import CODES, PROTOCOL_VERSION, meaning
from envhub.runtime.server.requests import MAX_SEED

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {"role": {"enum": ["system", "user", "assistant", "tool"]}, "content": {"type": "string"}},
}
_CONVERSATION = {"type": "array", "items": {"$ref": "#/components/schemas/Message"}}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"enum": sorted(CODES)},
                "message": {"type": "string"},
                "hint": {"type": ["string", "null"]},
                "fields": {"type": "object", "description": "typed fields of the error (env, where, timeout_s...)"},
            },
        }
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*classes: type[E.EnvhubError]) -> dict[str, Any]:
    """The error answers of a route, one per status, each naming its codes (read off their classes)."""
    by_status: dict[int, list[type[E.EnvhubError]]] = {}
    for cls in classes:
        by_status.setdefault(cls.status, []).append(cls)
    return {
        str(status): _json({"$ref": "#/components/schemas/Error"}, "; ".join(f"`{c.code}`: {meaning(c)}" for c in kinds))
        for status, kinds in sorted(by_status.items())
    }


def _body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"required": bool(required), "content": {"application/json": {"schema": schema}}}


#: What any route may answer: 401 when the server was started with a token (``envhub serve --token-file``).
ANY_ROUTE = (E.AuthenticationError,)
#: What reading a request body may answer.
BODY = (E.BadRequestError, E.BodyTooLargeError, E.RequestTimeoutError, *ANY_ROUTE)


def openapi_document(env_ref: str = "an environment") -> dict[str, Any]:
    sid = [{"name": "sid", "in": "path", "required": True, "schema": {"type": "string"}}]
    # CapacityError: the server is full, or every thread kept for stuck calls is taken (503, Retry-After).
    common = (*BODY, E.SessionNotFoundError, E.SessionBusyError, E.CapacityError, E.EnvhubError)
    seed = {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"envhub session server: {env_ref}",
            "version": str(PROTOCOL_VERSION),
            "description": "Episodes of one envhub environment over HTTP. Every error body has a stable `code`.",
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {
                        "200": _json({"type": "object"}, "ok"),
                        "503": _json({"type": "object"}, "degraded: every thread kept for stuck calls is taken (Retry-After); restart the server"),
                        **_errors(*ANY_ROUTE),
                    },
                }
            },
            "/v1/info": {
                "get": {
                    "summary": "Identity (with artifact digest), manifest, max_turns, rubric hash and criteria, limits",
                    "responses": {"200": _json({"type": "object"}, "the environment served"), **_errors(*ANY_ROUTE)},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"), **_errors(*ANY_ROUTE)}}
            },
            "/v1/sessions": {
                "post": {
                    "summary": "Open a session: a new environment instance built with `kwargs`",
                    "requestBody": _body({"kwargs": {"type": "object"}}),
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "session": {"type": "string"},
                                    "max_turns": {"type": "integer"},
                                    "rubric": {"type": "object"},
                                    "step_timeout_s": {"type": "number"},
                                },
                            },
                            "the session",
                        ),
                        **_errors(E.InvalidOptionError, E.EntrypointError, E.StepTimeoutError, *common),
                    },
                }
            },
            "/v1/sessions/{sid}/reset": {
                "post": {
                    "summary": "Start an episode; the observation is the first messages",
                    "parameters": sid,
                    "requestBody": _body({"seed": seed, "options": {"type": ["object", "null"]}}),
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"observation": _CONVERSATION, "info": {"type": "object"}}},
                            "the first messages",
                        ),
                        **_errors(E.InvalidOptionError, E.TaskNotFoundError, E.EnvironmentFailure, E.StepTimeoutError, *common),
                    },
                }
            },
            "/v1/sessions/{sid}/step": {
                "post": {
                    "summary": "Take the assistant's message; answer with the messages that follow it (a delta)",
                    "parameters": sid,
                    "requestBody": _body({"action": {"type": "string"}}, ["action"]),
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["length", "reward", "terminated", "truncated", "info"],
                                "properties": {
                                    "append": {**_CONVERSATION, "description": "messages after the action"},
                                    "observation": {**_CONVERSATION, "description": "the whole conversation, sent instead of `append` when earlier messages changed"},
                                    "length": {"type": "integer", "description": "the conversation's length after this step"},
                                    "reward": {"type": "number"},
                                    "terminated": {"type": "boolean"},
                                    "truncated": {"type": "boolean"},
                                    "info": {"type": "object", "description": "`rubric` holds every criterion's score when the episode ends"},
                                },
                            },
                            "the step's outcome",
                        ),
                        **_errors(E.InvalidActionError, E.EpisodeEndedError, E.EnvironmentFailure, E.CriterionError, E.StepTimeoutError, *common),
                    },
                }
            },
            "/v1/batch": {
                "post": {
                    "summary": "Many resets and steps in one request; answers stream back as each call finishes",
                    "requestBody": _body(
                        {
                            "calls": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["op", "session"],
                                    "properties": {
                                        "op": {"enum": ["reset", "step"]},
                                        "session": {"type": "string"},
                                        "action": {"type": "string"},
                                        "seed": seed,
                                        "options": {"type": ["object", "null"]},
                                    },
                                },
                            }
                        },
                        ["calls"],
                    ),
                    "responses": {
                        "200": {
                            "description": "one JSON line per call, in the order calls finish: "
                            '{"i": index of the call, "status": HTTP status its own route would answer, '
                            '"body": that route\'s body or error}',
                            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                        },
                        **_errors(*BODY),
                    },
                }
            },
            "/v1/sessions/{sid}": {
                "delete": {
                    "summary": "Close the session",
                    "parameters": sid,
                    "responses": {"204": {"description": "closed"}, **_errors(E.SessionNotFoundError, *ANY_ROUTE)},
                }
            },
            **openapi_paths(_errors, any_route=ANY_ROUTE, body=BODY),  # OpenEnv's protocol, served beside this one (openenv.py)
        },
        "components": {"schemas": {"Message": _MESSAGE, "Error": _ERROR}},
    }
