"""``envhub.make`` and ``envhub.pull``: from an id or a folder to a running environment.

``runtime`` picks where the environment's code runs: ``inprocess`` imports it here; ``process`` and
``docker`` run it behind the session protocol (:mod:`envhub.runtime.remote`). Whatever the runtime,
the caller gets an ``Env`` of the same contract. Only trusted code runs on this machine (in process
or as a child process): see :mod:`envhub.runtime.trust`.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium

from envhub.errors import EnvNotFoundError, InstalledTreeChangedError, InvalidOptionError, VersionNotFoundError
from envhub.identity.index import EnvEntry, VersionEntry
from envhub.registry import LocalRegistry, Registry, StaticRegistry, bundled_registry
from envhub.registry.installed import BUNDLED, PULLED
from envhub.runtime.loading import load_folder
from envhub.runtime.locate import Located, locate
from envhub.runtime.trust import require_trusted

__all__ = ["RUNTIMES", "Located", "locate", "make", "pull"]

#: Where an environment's code can run.
RUNTIMES = ("inprocess", "process", "docker")


def make(id_or_path: str | os.PathLike, *, runtime: str = "inprocess", **kwargs: Any) -> gymnasium.Env:
    """Build an environment. ``kwargs`` are passed to the environment's factory.

    >>> env = envhub.make("arithmetic", level="easy")
    >>> obs, info = env.reset(seed=0)
    """
    located = locate(id_or_path)
    if runtime not in RUNTIMES:
        raise InvalidOptionError(located.manifest.ref, "runtime", f"{runtime!r} is not one of {sorted(RUNTIMES)}")
    require_trusted(located, runtime)  # untrusted code runs in docker only
    if runtime == "inprocess":
        return load_folder(located.folder, digest=located.digest, **kwargs)
    from envhub.runtime.remote import make_remote  # the session client and pools load only when used

    return make_remote(runtime, located, **kwargs)


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
