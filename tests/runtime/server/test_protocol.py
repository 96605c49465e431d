"""Every error the session server answers comes back as the same class, with its typed fields."""

from __future__ import annotations

import pytest

from envhub import errors as E
from envhub.runtime.server.openapi import openapi_document
from envhub.runtime.server.protocol import CODES, ERRORS
from envhub.wire import from_body, to_body

ENV = "tests/faulty@1.0.0"

CASES = [
    (E.StepTimeoutError(ENV, "step", 2.0), "step_timeout", {"timeout_s": 2.0, "where": "step"}),
    (E.EnvironmentFailure(ENV, "respond", "RuntimeError: boom"), "environment_failure", {"where": "respond"}),
    (E.CriterionError("correct", "returned 2.0, outside [0, 1]", env=ENV), "criterion_error", {"criterion": "correct"}),
    (E.InvalidActionError(ENV, "expected str, got int"), "invalid_action", {"env": ENV}),
    (E.InvalidOptionError(ENV, "split", "'dev' is not one of ['train', 'test']"), "invalid_option", {"option": "split"}),
    (E.TaskNotFoundError(ENV, "t9", ["t0", "t1"]), "task_not_found", {"task_id": "t9"}),
    (E.EpisodeEndedError(ENV), "episode_ended", {"env": ENV}),
    (E.SessionNotFoundError("s1-abc"), "unknown_session", {"session": "s1-abc"}),
    (E.CapacityError(8), "capacity", {"limit": 8}),
    (E.BodyTooLargeError(1024, size=4096), "body_too_large", {"limit": 1024, "size": 4096}),
    (E.EntrypointError(ENV, "faulty_env:make_env", "bad arguments ['x']"), "entrypoint_error", {"entrypoint": "faulty_env:make_env"}),
]


@pytest.mark.parametrize(("error", "code", "fields"), CASES, ids=[c[1] for c in CASES])
def test_error_round_trip(error, code, fields):
    status, body = to_body(error)
    assert body["error"]["code"] == code and status == CODES[code][0]
    back = from_body(body, status, defaults={"env": "somewhere"})
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.hint == error.hint
    for name, value in fields.items():
        assert getattr(back, name) == value


def test_unknown_codes_and_garbage_become_remote_errors():
    other = from_body({"error": {"code": "teapot", "message": "short and stout"}}, 418, defaults={"env": ENV})
    assert isinstance(other, E.RemoteError) and other.code == "teapot" and other.status == 418
    garbage = from_body("<html>bad gateway</html>", 502, defaults={"env": ENV})
    assert isinstance(garbage, E.RemoteError) and "502" in str(garbage)


def test_a_bug_is_answered_internal_and_comes_back_as_a_remote_error():
    status, body = to_body(KeyError("task"))
    assert (status, body["error"]["code"], body["error"]["fields"]) == (500, "internal", {"type": "KeyError"})
    back = from_body(body, status)
    assert isinstance(back, E.RemoteError) and back.code == "internal" and back.status == 500
    assert str(back) == "KeyError: 'task'"


def test_fields_left_out_take_the_clients_defaults():
    status, body = to_body(E.CriterionError("correct", "returned 2.0"))  # raised with no env
    back = from_body(body, status, defaults={"env": ENV})
    assert isinstance(back, E.CriterionError) and back.env == ENV and back.criterion == "correct"


def test_codes_and_statuses_of_the_protocol():
    # The README's table: every code the session protocol answers, with its status.
    assert {code: status for code, (status, _) in CODES.items()} == {
        "bad_request": 400, "invalid_action": 422, "invalid_option": 422, "task_not_found": 404,
        "unknown_session": 404, "not_found": 404, "unauthenticated": 401, "method_not_allowed": 405, "episode_ended": 409,
        "session_busy": 409, "body_too_large": 413, "request_timeout": 408, "environment_failure": 500, "criterion_error": 500,
        "entrypoint_error": 500, "internal": 500, "capacity": 503, "step_timeout": 504,
    }  # fmt: skip
    assert all(CODES[cls.code][0] == cls.status and CODES[cls.code][1] for cls in ERRORS)


def test_runtime_errors_are_environment_failures():
    # One `except EnvironmentFailure` covers a crash in the env, a timeout and a dead runtime.
    assert issubclass(E.StepTimeoutError, E.EnvironmentFailure) and issubclass(E.StepTimeoutError, TimeoutError)
    assert issubclass(E.RuntimeDiedError, E.EnvironmentFailure) and issubclass(E.RuntimeDiedError, ConnectionError)


def test_openapi_lists_every_route():
    paths = openapi_document()["paths"]
    assert set(paths) == {
        "/healthz", "/v1/info", "/openapi.json", "/v1/sessions", "/v1/sessions/{sid}/reset", "/v1/sessions/{sid}/step",
        "/v1/sessions/{sid}", "/v1/batch",
        # OpenEnv's protocol, beside envhub's (envhub/runtime/server/openenv.py)
        "/health", "/metadata", "/schema", "/reset", "/step", "/state", "/mcp",
    }  # fmt: skip
