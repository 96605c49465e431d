"""``envhub.make`` and ``envhub.pull``: from an id or a folder to a running environment.

``make`` accepts a folder path, a bundled name (``arithmetic``) or ``namespace/name@version``. Ids
are looked up in the local registry first, then among the bundled environments. ``runtime`` picks
where the environment's code runs; ``inprocess`` imports it here. Other runtimes register themselves
in :data:`RUNTIMES`; whatever the runtime, the caller gets an ``Env`` of the same contract.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium

from envhub.errors import EnvhubError, EnvNotFoundError, InvalidOptionError, ManifestError, VersionNotFoundError
from envhub.ids import EnvId, parse_env_id
from envhub.index import EnvEntry, VersionEntry
from envhub.loading import load_folder
from envhub.lockfile import active_lockfile, check_installed, pin
from envhub.manifest import MANIFEST_FILE, Manifest, load_manifest
from envhub.registry import LocalRegistry, Registry, bundled_registry


@dataclass(frozen=True)
class Located:
    """Where an environment version lives on this machine."""

    folder: Path
    manifest: Manifest
    digest: str | None  # None for a plain folder: computed lazily from its contents
    registry: str  # "folder", "local" or "bundled"


def _looks_like_path(text: str) -> bool:
    # `namespace/name` also has one slash: only a folder with a manifest, or an explicit path, is a path.
    return (Path(text) / MANIFEST_FILE).is_file() or text.startswith((".", "/", "~")) or text.count("/") > 1


def locate(id_or_path: str | os.PathLike) -> Located:
    """Find an environment version on this machine without importing it."""
    text = os.fspath(id_or_path)
    if isinstance(id_or_path, os.PathLike) or _looks_like_path(text):
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise ManifestError(text, ["no such folder"])
        return Located(folder, load_manifest(folder), None, "folder")
    env_id = parse_env_id(text)
    lock = active_lockfile()  # envhub.lock pins the version and the digest
    if lock is not None:
        env_id = pin(env_id, lock[1], lock[0])
    errors: list[EnvhubError] = []
    local = LocalRegistry()
    bundled = bundled_registry()
    for registry, label in ((local, "local"), (bundled, "bundled")):
        if registry is None:
            continue
        try:
            entry, version = registry.resolve(env_id)
        except (EnvNotFoundError, VersionNotFoundError) as exc:
            errors.append(exc)
            continue
        folder = registry.folder(entry, version)
        if folder is None:  # a bundled index that points at archives, not folders
            raise EnvNotFoundError(str(env_id), where=registry.description)
        if lock is not None:
            check_installed(registry, entry, version, lock[1], lock[0])
        return Located(folder, load_manifest(folder), version.digest, label)
    raise _most_specific(env_id, errors)


def _most_specific(env_id: EnvId, errors: list[EnvhubError]) -> EnvhubError:
    """A missing version beats a missing name; missing names merge their suggestions."""
    for exc in errors:
        if isinstance(exc, VersionNotFoundError):
            return exc
    suggestions = sorted({s for exc in errors for s in getattr(exc, "suggestions", [])})
    where = "the local registry or the bundled environments"
    return EnvNotFoundError(str(EnvId(env_id.namespace, env_id.name)), where=where, available=suggestions)


RuntimeFactory = Callable[..., gymnasium.Env]
#: Runtime name -> ``factory(located, **kwargs) -> Env``. ``inprocess`` is built in.
RUNTIMES: dict[str, RuntimeFactory] = {}


def _inprocess(located: Located, **kwargs: Any) -> gymnasium.Env:
    return load_folder(located.folder, digest=located.digest, **kwargs)


RUNTIMES["inprocess"] = _inprocess


def make(id_or_path: str | os.PathLike, *, runtime: str = "inprocess", **kwargs: Any) -> gymnasium.Env:
    """Build an environment. ``kwargs`` are passed to the environment's factory.

    >>> env = envhub.make("arithmetic", level="easy")
    >>> obs, info = env.reset(seed=0)
    """
    located = locate(id_or_path)
    if runtime not in RUNTIMES:
        _load_runtime_plugins()
    factory = RUNTIMES.get(runtime)
    if factory is None:
        raise InvalidOptionError(located.manifest.ref, "runtime", f"{runtime!r} is not one of {sorted(RUNTIMES)}")
    return factory(located, **kwargs)


def _load_runtime_plugins() -> None:
    """Import the optional runtimes, which add themselves to :data:`RUNTIMES` when importable."""
    try:
        import envhub.runtimes  # noqa: F401
    except ImportError:
        pass


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
    try:
        have_entry, have = local.resolve(f"{entry.full_name}@{version.version}")
        if have.digest == version.digest and local.folder(have_entry, have).is_dir():
            local.fetch(have_entry, have)  # the cached artifact still hashes to its digest
            return have_entry, have, False
    except (EnvNotFoundError, VersionNotFoundError):
        pass
    data = source.fetch(entry, version)
    ref = f"{entry.full_name}@{version.version}"
    installed, created = local.install(data, expected_digest=version.digest, expected_ref=ref, source=ref)
    return local.index().environments[entry.full_name], installed, created
