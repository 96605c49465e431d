"""Errors on the wire between the hub server and its client.

The server answers every error as ``{"error": {"code", "message", "hint", "fields"}}`` with an HTTP
status; the client turns it back into the same :mod:`envhub.errors` class, so a caller catches
``VersionConflictError`` whether the registry is a folder or a server.
"""

from __future__ import annotations

from typing import Any

from envhub import errors as E

class NotFoundError(E.EnvhubError, LookupError):
    """Something other than an environment (a pack, a user, a token) that does not exist."""


class ConflictError(E.EnvhubError, ValueError):
    """A name that is already taken (a user, an organisation, a pack version with other contents)."""


#: class -> (HTTP status, code, the typed fields that rebuild it); subclasses before their bases.
_TABLE: list[tuple[type[E.EnvhubError], int, str, tuple[str, ...]]] = [
    (E.AuthenticationError, 401, "unauthenticated", ()),
    (E.PermissionDeniedError, 403, "forbidden", ("pack",)),
    (E.EnvNotFoundError, 404, "env_not_found", ("name", "where", "suggestions")),
    (E.VersionNotFoundError, 404, "version_not_found", ("name", "requested", "available")),
    (NotFoundError, 404, "not_found", ()),
    (E.VersionConflictError, 409, "version_conflict", ("ref", "existing", "new")),
    (ConflictError, 409, "conflict", ()),
    (E.PayloadTooLargeError, 413, "payload_too_large", ("size", "limit")),
    (E.DigestMismatchError, 400, "digest_mismatch", ("expected", "actual")),
    (E.ManifestError, 422, "invalid_manifest", ("path", "problems")),
    (E.ArtifactError, 400, "invalid_artifact", ()),
    (E.InvalidEnvIdError, 400, "invalid_id", ("env_id",)),
    (E.SignatureError, 400, "invalid_signature", ("pack",)),
]


def to_payload(exc: E.EnvhubError) -> tuple[int, dict[str, Any]]:
    """The status and JSON body for ``exc``."""
    for cls, status, code, names in _TABLE:
        if isinstance(exc, cls):
            fields = {name: getattr(exc, name, None) for name in names}
            break
    else:
        status, code, fields = 400, "bad_request", {}
    body = {"error": {"code": code, "message": str(exc), "hint": exc.hint, "fields": fields}}
    return status, body


def from_payload(status: int, body: Any, *, registry: str) -> E.EnvhubError:
    """Rebuild the error the server raised from its answer: the same class and typed fields, and the
    server's own message (it knows what it was doing: a stored artifact, an upload...)."""
    exc = _rebuild(status, body, registry=registry)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message") and not isinstance(exc, E.RegistryError):
        exc.args = (str(err["message"]),)
    return exc


def _rebuild(status: int, body: Any, *, registry: str) -> E.EnvhubError:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        detail = body.get("detail") if isinstance(body, dict) else body
        return E.RegistryError(f"{registry} answered HTTP {status}: {str(detail)[:300]}")
    code, message, f = err.get("code"), str(err.get("message", "")), err.get("fields") or {}
    hint = err.get("hint")
    try:
        if code == "unauthenticated":
            return E.AuthenticationError(message, registry=registry)
        if code == "forbidden":
            return E.PermissionDeniedError(message, pack=f.get("pack"))
        if code == "env_not_found":
            return E.EnvNotFoundError(f["name"], where=f"{registry}", available=f.get("suggestions") or [])
        if code == "version_not_found":
            return E.VersionNotFoundError(f["name"], f["requested"], f.get("available") or [])
        if code == "version_conflict":
            return E.VersionConflictError(f["ref"], f["existing"], f["new"])
        if code == "payload_too_large":
            return E.PayloadTooLargeError(f.get("size"), int(f["limit"]))
        if code == "digest_mismatch":
            return E.DigestMismatchError(registry, f["expected"], f["actual"])
        if code == "invalid_manifest":
            return E.ManifestError(str(f.get("path")), list(f.get("problems") or [message]))
        if code == "invalid_signature":
            return E.SignatureError(str(f.get("pack")), message)
        if code == "invalid_artifact":
            return E.ArtifactError(message, hint=hint)
        if code == "not_found":
            return NotFoundError(message, hint=hint)
        if code == "conflict":
            return ConflictError(message, hint=hint)
    except (KeyError, TypeError, ValueError):
        pass
    return E.RegistryError(f"{registry}: {message}", hint=hint)
