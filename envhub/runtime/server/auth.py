"""Optional bearer-token authentication for ``envhub serve``, on every route of both protocols.

With a token, every HTTP request and WebSocket handshake (envhub's ``/v1`` routes, ``/healthz``,
``/openapi.json`` and OpenEnv's routes, ``/ws`` and ``/mcp`` included) must carry
``Authorization: Bearer TOKEN``; anything else is answered 401 ``unauthenticated`` in the error
envelope (a WebSocket is refused at the handshake with the same answer). Tokens are compared in
constant time. The runtimes' servers listen on Unix sockets in private folders and need none.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Any

from envhub import _json
from envhub.errors import AuthenticationError, BadRequestError
from envhub.wire import to_body

#: The variable ``envhub serve`` reads the token from, and RemoteEnv sends it from (explicit URLs only).
TOKEN_ENV = "ENVHUB_SERVE_TOKEN"


def read_token(token_file: str | Path | None = None, *, from_env: bool = True) -> str | None:
    """The token in ``token_file`` (its first line), else ``$ENVHUB_SERVE_TOKEN``, else None."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BadRequestError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise BadRequestError(f"the token file {token_file} is empty", hint="write the token on its first line")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip() if from_env else ""
    return token or None


def _refusal(present: bool) -> tuple[int, bytes]:
    error = AuthenticationError("the token is not this server's" if present else "this server needs a bearer token")
    error.hint = f"send `Authorization: Bearer TOKEN` (RemoteEnv(url, token=...) or ${TOKEN_ENV})"
    status, body = to_body(error)
    return status, _json.dumps(body)


class BearerAuth:
    """ASGI middleware: ``app`` behind a bearer token (lifespan events pass through)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    def _allowed(self, scope: dict[str, Any]) -> tuple[bool, bool]:
        """(allowed, a token was sent)."""
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected), True
        return False, False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        allowed, present = self._allowed(scope)
        if allowed:
            return await self.app(scope, receive, send)
        status, body = _refusal(present)
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # a server without the denial extension: refuse the handshake plainly
            await send({"type": "websocket.close", "code": 1008})
