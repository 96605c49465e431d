"""Compact JSON as bytes for the session protocol: orjson where installed (the ``serve`` extra),
the standard library otherwise. Encoding and decoding are most of a step's cost in the protocol.

Both spellings give the same JSON for what the protocol carries (str, int, float, bool, None,
lists and dicts with str keys); :func:`dumps` takes a ``default`` for anything else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - exercised where the serve extra is absent
    orjson = None  # type: ignore[assignment]


def _dumps_std(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    return json.dumps(value, default=default, separators=(",", ":"), ensure_ascii=False).encode()


if orjson is not None:
    _ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
        try:
            return orjson.dumps(value, default=default, option=_ORJSON_OPTIONS)
        except TypeError:  # e.g. an int past 64 bits: the standard library takes what orjson won't
            return _dumps_std(value, default)

    def loads(data: bytes | str) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            # NaN and Infinity, which Python's json writes and reads: parse as it would, or raise
            # its ValueError with its message.
            return json.loads(data)

else:
    dumps = _dumps_std
    loads = json.loads


def plain(value: Any) -> Any:
    """The ``default`` for what environments put in ``info`` beyond JSON: numpy scalars and arrays
    as numbers and lists, sets and tuples as lists, anything else as its text."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
