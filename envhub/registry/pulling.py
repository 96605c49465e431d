"""``pull``: one environment version from a registry into the local registry, checked by digest.

Used by ``envhub pull``, ``envhub pack pull`` and by :func:`envhub.runtime.locate.locate` when this
machine lacks a version that the configured registry has.
"""

from __future__ import annotations

from envhub.errors import EnvNotFoundError, InstalledTreeChangedError, VersionNotFoundError
from envhub.identity.index import EnvEntry, VersionEntry
from envhub.registry.base import Registry
from envhub.registry.installed import BUNDLED, PULLED
from envhub.registry.local import LocalRegistry
from envhub.registry.static import StaticRegistry, bundled_registry

__all__ = ["pull"]


def pull(env_id: str, *, source: Registry | None = None, local: LocalRegistry | None = None) -> tuple[EnvEntry, VersionEntry, bool]:
    """Fetch a version from ``source`` (default: the bundled environments) into the local registry.

    Returns (entry, version, created); pulling a version already present with the same digest is a
    no-op. The artifact is checked against its digest before it is unpacked.
    """
    source = source or bundled_registry()
    if source is None:
        raise EnvNotFoundError(env_id, where="any registry (no bundled environments in this install)")
    local = local or LocalRegistry()
    entry, version = source.resolve(env_id)
    origin = BUNDLED if _is_bundled(source) else PULLED
    try:
        have_entry, have = local.resolve(f"{entry.full_name}@{version.version}")
        if have.digest == version.digest:
            local.fetch(have_entry, have)  # the cached artifact still hashes to its digest
            local.verify_installed(have_entry, have)
            return have_entry, have, False
    except (EnvNotFoundError, VersionNotFoundError, InstalledTreeChangedError):
        pass  # absent, or its folder was changed: installed (put back) below
    data = source.fetch(entry, version)
    ref = f"{entry.full_name}@{version.version}"
    installed, created = local.install(
        data, expected_digest=version.digest, expected_ref=ref, source=ref, origin=origin, origin_source=source.description
    )
    return local.index().environments[entry.full_name], installed, created


def _is_bundled(source: Registry) -> bool:
    """Whether ``source`` is the registry of the environments that ship with envhub."""
    bundled = bundled_registry()
    return (
        bundled is not None
        and isinstance(source, StaticRegistry)
        and source.root.resolve() == bundled.root.resolve()
    )
