"""Register environments with gymnasium: ``gymnasium.make("envhub/arithmetic-v1")``.

The bundled environments and those installed in the local registry (``envhub publish``, ``envhub
pull``) are registered when envhub is imported, each as ``NAMESPACE/NAME-vN``; a version installed
later in the same process is registered by :func:`register_installed`. Gymnasium ids carry only a
major version, so ``NAMESPACE/NAME-vN`` resolves to the newest ``N.x.y`` (through ``envhub.make``,
so the trust rules and ``runtime=`` apply as they do there).
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium

from envhub.identity.ids import Version
from envhub.identity.index import Index


def _make_major(ref: str, **kwargs: Any) -> gymnasium.Env:
    from envhub.runtime.make import make

    return make(ref, **kwargs)


def _register_index(index: Index) -> list[str]:
    """Register every major version of every environment of ``index``; returns the gymnasium ids."""
    ids = []
    for entry in index.environments.values():
        for major in sorted({Version.parse(v).major for v in entry.versions}):
            gym_id = f"{entry.namespace}/{entry.name}-v{major}"
            if gym_id not in gymnasium.registry:
                entry_point = functools.partial(_make_major, f"{entry.full_name}@^{major}")
                gymnasium.register(id=gym_id, entry_point=entry_point, disable_env_checker=False)
            ids.append(gym_id)
    return ids


def register_bundled() -> list[str]:
    """Register every bundled environment's major versions; returns the gymnasium ids."""
    from envhub.errors import RegistryError
    from envhub.registry import bundled_registry

    registry = bundled_registry()
    if registry is None:
        return []
    try:
        return _register_index(registry.index())
    except RegistryError:
        return []


def register_installed() -> list[str]:
    """Register the major versions installed in the local registry; returns the gymnasium ids.

    A local registry that cannot be read registers nothing: ``import envhub`` must not fail on it
    (``envhub.make`` says what is wrong with it).
    """
    from envhub.errors import EnvhubError
    from envhub.registry import LocalRegistry

    try:
        return _register_index(LocalRegistry().index())
    except EnvhubError:
        return []
