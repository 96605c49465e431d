"""Bare names (``arithmetic``, no namespace): what they may name.

A bare name is a shorthand for code the user already trusts: a bundled environment, or one the user
published (or pulled from the bundled ones) into the local registry. Anywhere else (a hub, a static
registry) anyone may have published it under a namespace of their choosing, so a bare name there is
never resolved: the error lists the fully qualified candidates to pick from.
"""

from __future__ import annotations

from envhub.errors import BareNameError
from envhub.identity.ids import EnvId
from envhub.identity.index import EnvEntry, Index


def same_name(index: Index, env_id: EnvId) -> list[EnvEntry]:
    return [e for e in index.environments.values() if e.name == env_id.name]


def refuse_bare(index: Index, env_id: EnvId, *, where: str) -> None:
    """Raise :class:`BareNameError` for a bare ``env_id`` that ``index`` holds under any namespace
    (a name it does not hold at all gets the usual not-found error from the caller)."""
    if env_id.namespace is None:
        candidates = same_name(index, env_id)
        if candidates:
            raise BareNameError(env_id.name, where=where, candidates=[e.full_name for e in candidates])
