"""The error tree and its one wire: every class has its own stable code and HTTP status, and comes
back from :func:`envhub.wire.to_body` / :func:`envhub.wire.from_body` as itself, with its message,
hint and typed fields."""

from __future__ import annotations

import importlib
import json

import pytest

from envhub import errors as E
from envhub.wire import BAD_RESPONSE, CLASSES, from_body, to_body

ENV = "acme/sql@1.2.0"

#: One instance of each class, built as the code that raises it does. A new class needs one here.
SAMPLES = {
    "InvalidEnvIdError": lambda: E.InvalidEnvIdError("Acme/x", "names use lowercase letters"),
    "EnvNotFoundError": lambda: E.EnvNotFoundError("acme/sqll", where="the hub at http://h", available=["acme/sql"]),
    "BareNameError": lambda: E.BareNameError("sql", where="the hub at http://h", candidates=["acme/sql", "bob/sql"]),
    "VersionNotFoundError": lambda: E.VersionNotFoundError("acme/sql", "^3", ["1.0.0", "2.0.0"]),
    "ManifestError": lambda: E.ManifestError("envhub.toml", ["version: not a version", "name: missing"]),
    "EntrypointError": lambda: E.EntrypointError(ENV, "sql_env:make", "ModuleNotFoundError: sql_env"),
    "MissingDependencyError": lambda: E.MissingDependencyError(ENV, ["`sqlglot==25.1` (not installed)"], install="pip install 'sqlglot==25.1'"),
    "ImportSourceError": lambda: E.ImportSourceError("textarena", "Wordle-v0", "it downloads nltk data when imported"),
    "ArtifactError": lambda: E.ArtifactError("refusing archive entry '../x': it climbs out of the folder"),
    "DigestMismatchError": lambda: E.DigestMismatchError("upload", "sha256:" + "a" * 64, "sha256:" + "b" * 64),
    "InstalledTreeChangedError": lambda: E.InstalledTreeChangedError(ENV, "/tmp/x", ["a.py"], expected="sha256:" + "a" * 64),
    "VersionConflictError": lambda: E.VersionConflictError(ENV, "sha256:" + "a" * 64, "sha256:" + "b" * 64),
    "RegistryError": lambda: E.RegistryError("registry index x is unreadable", hint="restore it"),
    "InvalidActionError": lambda: E.InvalidActionError(ENV, "expected str, got int"),
    "EpisodeEndedError": lambda: E.EpisodeEndedError(ENV),
    "TaskNotFoundError": lambda: E.TaskNotFoundError(ENV, "q9", ["q0", "q1"]),
    "EnvironmentFailure": lambda: E.EnvironmentFailure(ENV, "respond", "RuntimeError: boom"),
    "CriterionError": lambda: E.CriterionError("correct", "returned 2.0, outside [0, 1]", env=ENV),
    "Unscored": lambda: E.Unscored("no judge endpoint configured"),
    "JudgeError": lambda: E.JudgeError("helpful", "no score in the answer", hint="check the judge prompt"),
    "ChecksFailed": lambda: E.ChecksFailed(ENV, ["probe: earns 1.0"]),
    "ValidationFailed": lambda: E.ValidationFailed(ENV, ["seeded: resets differ", "check_env: bad space"]),
    "InvalidOptionError": lambda: E.InvalidOptionError(ENV, "split", "'dev' is not one of ['train', 'test']"),
    "LockfileError": lambda: E.LockfileError("envhub.lock", "pins 1.0.0, installed 1.1.0"),
    "AuthenticationError": lambda: E.AuthenticationError("the token is not known to this hub", registry="http://h"),
    "PermissionDeniedError": lambda: E.PermissionDeniedError("`acme/sql` is private", pack="acme/bundle"),
    "NotFoundError": lambda: E.NotFoundError("pack `acme/bundl` not found.", hint="the hub's front page lists its packs"),
    "ConflictError": lambda: E.ConflictError("the name 'alice' is taken", hint="pick another name"),
    "SignatureError": lambda: E.SignatureError("acme/bundle@1.0.0", "its signature does not verify"),
    "TooManyRequestsError": lambda: E.TooManyRequestsError(42),
    "PayloadTooLargeError": lambda: E.PayloadTooLargeError(200 << 20, 100 << 20),
    "BadRequestError": lambda: E.BadRequestError("the body is not valid JSON"),
    "InvalidRequestError": lambda: E.InvalidRequestError(["path.version: Value error, not a version", "body.name: too long"]),
    "MethodNotAllowedError": lambda: E.MethodNotAllowedError("PUT /v1/info: the route does not take this method"),
    "SessionBusyError": lambda: E.SessionBusyError("s1-abc"),
    "StepTimeoutError": lambda: E.StepTimeoutError(ENV, "step", 2.5),
    "RuntimeDiedError": lambda: E.RuntimeDiedError(ENV, "the container exited with 137 (out of memory)"),
    "SessionNotFoundError": lambda: E.SessionNotFoundError("s1-abc"),
    "UntrustedCodeError": lambda: E.UntrustedCodeError(ENV, "acme", "inprocess", source="the hub at http://h"),
    "CapacityError": lambda: E.CapacityError(4096),
    "UploadsBusyError": lambda: E.UploadsBusyError(8, retry_after=30),
    "BodyTooLargeError": lambda: E.BodyTooLargeError(1024, size=4096),
    "RequestTimeoutError": lambda: E.RequestTimeoutError(30.0, received=12),
    "RemoteError": lambda: E.RemoteError("teapot", "short and stout", status=418, hint="try coffee"),
    "DockerUnavailableError": lambda: E.DockerUnavailableError("no docker daemon at unix:///var/run/docker.sock"),
    "ImageBuildError": lambda: E.ImageBuildError(ENV, "pip failed", log="ERROR: no matching distribution"),
    "EndpointError": lambda: E.EndpointError("http://127.0.0.1:8000/v1", "HTTP 503", status=503, attempts=3),
    "AdapterMismatchError": lambda: E.AdapterMismatchError("runs/a", "SmolLM2-360M", "trained on SmolLM2-135M"),
    "EvalRunError": lambda: E.EvalRunError("runs/eval", "it was run on another environment"),
    "TrainRunError": lambda: E.TrainRunError("runs/train", "it holds a run of another environment", hint="pass --overwrite"),
    "AuditFailed": lambda: E.AuditFailed(ENV, ["empty answer earns 0.5"]),
    "ModelLoadError": lambda: E.ModelLoadError("SmolLM2-135M", "torch is not installed"),
    "UnsupportedModelError": lambda: E.UnsupportedModelError("Qwen3NextForCausalLM", "its cache keeps a recurrent state (LinearAttentionLayer)"),
    "TransportError": lambda: E.TransportError("127.0.0.1:8000", "the connection closed mid-answer"),
}


def tree() -> list[type[E.EnvhubError]]:
    """Every class of envhub/errors.py, the root first."""
    return [c for c in vars(E).values() if isinstance(c, type) and issubclass(c, E.EnvhubError) and c.__module__ == E.__name__]


def over_the_wire(error: BaseException) -> E.EnvhubError:
    status, body = to_body(error)
    return from_body(json.loads(json.dumps(body)), status)  # as bytes on a socket would carry it


def test_every_class_has_its_own_code_and_status_and_a_stdlib_co_base():
    for cls in tree():
        assert "code" in vars(cls) and "status" in vars(cls), f"{cls.__name__} names no code or status of its own"
        assert isinstance(cls.code, str) and cls.code.isidentifier() and cls.code.islower(), cls
        assert 400 <= cls.status < 600, cls
        if cls is not E.EnvhubError:
            co_bases = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]
            assert co_bases, f"{cls.__name__} has no stdlib co-base"


def test_a_code_maps_to_exactly_one_class():
    codes = [cls.code for cls in tree()]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    # The root and RemoteError stand for codes with no class here; every other class is found by its code.
    assert {CLASSES[cls.code] for cls in tree() if cls not in (E.EnvhubError, E.RemoteError)} == set(tree()) - {E.EnvhubError, E.RemoteError}
    assert E.EnvhubError.code not in CLASSES and E.RemoteError.code not in CLASSES


@pytest.mark.parametrize("cls", [c for c in tree() if c is not E.EnvhubError], ids=lambda c: c.__name__)
def test_every_class_round_trips(cls):
    assert cls.__name__ in SAMPLES, f"add a sample of {cls.__name__} to SAMPLES"
    error = SAMPLES[cls.__name__]()
    assert type(error) is cls
    status, body = to_body(error)
    assert status == error.status and body["error"]["code"] == error.code
    back = over_the_wire(error)
    assert type(back) is cls
    assert str(back) == str(error) and back.hint == error.hint
    assert vars(back) == vars(error)  # every typed field, and nothing that the class's fields leave out
    assert isinstance(back, E.EnvhubError)


def test_the_hub_codes_and_statuses_stay_as_they_were():
    answered = {cls.code: cls.status for cls in tree()}
    assert {code: answered[code] for code in (
        "unauthenticated", "forbidden", "env_not_found", "version_not_found", "not_found", "version_conflict",
        "conflict", "payload_too_large", "digest_mismatch", "invalid_manifest", "invalid_artifact", "invalid_id",
        "invalid_signature", "bad_request", "invalid_request",
    )} == {
        "unauthenticated": 401, "forbidden": 403, "env_not_found": 404, "version_not_found": 404, "not_found": 404,
        "version_conflict": 409, "conflict": 409, "payload_too_large": 413, "digest_mismatch": 400,
        "invalid_manifest": 422, "invalid_artifact": 400, "invalid_id": 400, "invalid_signature": 400,
        "bad_request": 400, "invalid_request": 422,
    }  # fmt: skip


def test_the_root_and_foreign_exceptions_come_back_as_remote_errors():
    back = over_the_wire(E.EnvhubError("something odd", hint="look at the logs"))
    assert type(back) is E.RemoteError and (back.code, back.status) == ("internal", 500)
    assert str(back) == "something odd" and back.hint == "look at the logs"
    status, body = to_body(ZeroDivisionError("division by zero"))
    assert status == 500 and body["error"]["fields"] == {"type": "ZeroDivisionError"}
    assert str(from_body(body, status)) == "ZeroDivisionError: division by zero"


def test_answers_that_are_no_envhub_error():
    page = from_body({"detail": "Method Not Allowed"}, 405)
    assert type(page) is E.RemoteError and (page.code, page.status) == (BAD_RESPONSE, 405)
    assert "405" in str(page) and "Method Not Allowed" in str(page)
    assert from_body(None, 502).code == BAD_RESPONSE
    odd = from_body({"error": {"code": "version_conflict", "message": "conflict", "fields": "not a dict"}}, 409)
    assert type(odd) is E.VersionConflictError and odd.ref is None and str(odd) == "conflict"


def test_errors_moved_into_the_tree():
    from envhub.env import rubric

    assert rubric.Unscored is E.Unscored
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("envhub.registry.wire")
