"""Register the bundled environments with gymnasium: ``gymnasium.make("envhub/arithmetic-v1")``.

Gymnasium ids carry only a major version, so ``envhub/NAME-vN`` resolves to the newest ``N.x.y``.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium

from envhub.identity.ids import Version


def _make_major(ref: str, **kwargs: Any) -> gymnasium.Env:
    from envhub.runtime.make import make

    return make(ref, **kwargs)


def register_bundled() -> list[str]:
    """Register every bundled environment's major versions; returns the gymnasium ids."""
    from envhub.errors import RegistryError
    from envhub.registry import bundled_registry

    registry = bundled_registry()
    if registry is None:
        return []
    try:
        index = registry.index()
    except RegistryError:
        return []
    ids = []
    for entry in index.environments.values():
        for major in sorted({Version.parse(v).major for v in entry.versions}):
            gym_id = f"{entry.namespace}/{entry.name}-v{major}"
            if gym_id not in gymnasium.registry:
                entry_point = functools.partial(_make_major, f"{entry.full_name}@^{major}")
                gymnasium.register(id=gym_id, entry_point=entry_point, disable_env_checker=False)
            ids.append(gym_id)
    return ids
