"""What the session server accepts from a client before any environment code sees it.

A request body is read within a size limit and a deadline, parsed only when its nesting is shallow
(a 100,000-deep object crashes some JSON parsers outright), and its reset arguments are checked here:
a client's mistake is answered with a 4xx code of its own, never with a 500 from deep inside the
environment or the parser.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.requests import Request

from envhub import _json
from envhub.errors import BadRequestError, BodyTooLargeError, InvalidOptionError, RequestTimeoutError

#: Deepest nesting of arrays and objects accepted in a body or message. Actions are strings; kwargs,
#: options and calls are shallow: anything deeper is an attack on the parser, not an episode.
MAX_JSON_DEPTH = 64
#: Longest task id or split name accepted: ids name tasks, they do not carry them.
MAX_NAME_CHARS = 256
#: Seeds are what numpy and gymnasium take: a non-negative integer, here below 2**64.
MAX_SEED = 2**64 - 1

_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def json_depth_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``raw`` nests arrays and objects deeper than ``limit``, found without parsing it.

    Cheap for what the protocol carries: few brackets take one count; otherwise strings are cut
    out (brackets inside them do not nest) and matched pairs peeled off one level per pass.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    return bool(brackets)


def parse_json(raw: bytes | str, *, what: str = "the body") -> Any:
    """``raw`` parsed, or :class:`BadRequestError` naming why not (not JSON, nested too deep)."""
    data = raw.encode() if isinstance(raw, str) else raw
    if json_depth_exceeds(data):
        raise BadRequestError(f"{what} nests arrays or objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        return _json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BadRequestError(f"{what} is not valid JSON: {exc}") from None


async def read_body(request: Request, *, limit: int, timeout_s: float | None) -> bytes:
    """The request's body: at most ``limit`` bytes, all of it within ``timeout_s`` seconds.

    A body over the limit is read on (and dropped), up to a bound, so that the client is told why
    rather than finding the connection closed under a body it is still sending. A body that does
    not arrive in time (a client that sends a few bytes and stalls, to hold the server's sockets
    and memory) is answered with ``request_timeout`` (408) and its connection closed.
    """
    declared = request.headers.get("content-length")
    size_known = int(declared) if declared is not None and declared.isdigit() else None
    chunks: list[bytes] = []
    seen = [0, size_known is not None and size_known > limit]  # bytes read, too large

    async def read() -> None:
        async for chunk in request.stream():
            seen[0] += len(chunk)
            if seen[0] > limit:
                seen[1] = True
                if seen[0] > max(4 * limit, 64 * 1024 * 1024):
                    break
                continue
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestTimeoutError(timeout_s or 0.0, received=seen[0]) from None
    if seen[1]:
        raise BodyTooLargeError(limit, size=size_known or seen[0])
    return b"".join(chunks)


def json_object(raw: bytes) -> dict[str, Any]:
    """A body that must be a JSON object (empty means ``{}``)."""
    if not raw.strip():
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequestError(f"the body must be a JSON object, got {type(body).__name__}")
    return body


def checked_seed(seed: Any) -> int | None:
    """A reset's ``seed``: null, or an integer in [0, 2**64)."""
    if seed is None:
        return None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise BadRequestError(f"`seed` must be an integer or null, got {_short(seed)}")
    if not 0 <= seed <= MAX_SEED:
        raise BadRequestError(f"`seed` must be between 0 and 2**64 - 1, got {_short(seed)}")
    return seed


def checked_options(env: str, options: Any) -> dict[str, Any] | None:
    """A reset's ``options``: null or an object whose ``task_id`` and ``split`` are short names."""
    if options is None:
        return None
    if not isinstance(options, dict):
        raise BadRequestError("`options` must be an object or null")
    for key in ("task_id", "split"):
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise InvalidOptionError(env, key, f"must be a string, got {type(value).__name__}")
        if len(str(value)) > MAX_NAME_CHARS:
            raise InvalidOptionError(env, key, f"longer than {MAX_NAME_CHARS} characters")
    return options


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
