"""Errors on the wire: one JSON body for every error an envhub server answers, read back by its client.

An error travels as ``{"error": {"code", "message", "hint", "fields"}}`` under the HTTP status of its
class: each class of :mod:`envhub.errors` names its ``code``, ``status`` and typed ``fields``. The
session server and the hub answer with :func:`to_body`; their clients read the answer with
:func:`from_body`, which gives back the same class with the server's message, hint and fields, so a
caller catches a remote error as it would the in-process one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from envhub import errors as E

#: The code of an answer that is no envhub error at all (a proxy's page, a crashed server's text).
BAD_RESPONSE = "bad_response"


def _tree(root: type[E.EnvhubError]) -> Iterator[type[E.EnvhubError]]:
    for sub in root.__subclasses__():
        yield sub
        yield from _tree(sub)


#: code -> the class it rebuilds: every class of :mod:`envhub.errors` with a code of its own (one
#: without travels as its parent), but the root (``internal``) and RemoteError, which stand for
#: codes that have no class of their own on this side.
CLASSES: dict[str, type[E.EnvhubError]] = {
    cls.code: cls
    for cls in _tree(E.EnvhubError)
    if cls.__module__ == E.__name__ and "code" in vars(cls) and cls is not E.RemoteError
}


def to_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body that answer ``exc``. An exception from outside the tree is a
    bug: it is answered with the root's code, ``internal`` (500), its type named in ``fields``."""
    if isinstance(exc, E.EnvhubError):
        code, status, message, hint = exc.code, exc.status, str(exc), exc.hint
        fields = {name: _plain(getattr(exc, name, None)) for name in type(exc).fields}
    else:
        code, status, message, hint = E.EnvhubError.code, E.EnvhubError.status, f"{type(exc).__name__}: {exc}", None
        fields = {"type": type(exc).__name__}
    return status, {"error": {"code": code, "message": message, "hint": hint, "fields": fields}}


def from_body(body: Any, status: int, *, defaults: Mapping[str, Any] | None = None) -> E.EnvhubError:
    """The error that a server answered with ``body`` under HTTP ``status``.

    The class is the one of the body's code, with the server's exact message and hint and the typed
    fields it sent; ``defaults`` fill the fields it left out or null (the caller's own name for the
    environment or the registry). A code with no class here gives a
    :class:`~envhub.errors.RemoteError` with that code and status, and a body that is no envhub
    error one with the code :data:`BAD_RESPONSE`.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        detail = body.get("detail", body) if isinstance(body, dict) else body
        shown = f": {str(detail)[:300]}" if detail else ""
        return E.RemoteError(BAD_RESPONSE, f"the server answered HTTP {status} without an error body{shown}", status=status)
    code = error["code"]
    message = str(error.get("message") or code)
    sent = error.get("fields") if isinstance(error.get("fields"), dict) else {}
    cls = CLASSES.get(code)
    exc: E.EnvhubError
    if cls is None:
        exc = E.RemoteError(code, message, status=status)
    else:
        exc = _blank(cls, message)
        for name in cls.fields:
            value = sent.get(name)
            setattr(exc, name, value if value is not None else (defaults or {}).get(name))
    exc.args = (message,)
    if isinstance(exc, ImportError):  # ImportError prints its `msg`, not its args
        exc.msg = message
    hint = error.get("hint")
    if isinstance(hint, str):
        exc.hint = hint
    return exc


def _blank(cls: type[E.EnvhubError], message: str) -> E.EnvhubError:
    """An instance of ``cls`` whose ``__init__`` has not run: each composes its own message, and the
    server's is the one to keep. Made by the ``__new__`` of the builtin base that lays the instance
    out (``OSError`` for a ``TimeoutError``), as calling the class would."""
    layout = max((b for b in cls.__mro__ if b.__module__ == "builtins"), key=lambda b: b.__basicsize__)
    return layout.__new__(cls, message)  # type: ignore[call-overload]


def _plain(value: Any) -> Any:
    """``value`` as JSON can carry it: tuples become lists, anything unknown its text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
