"""From an id or a folder to an environment version on this machine, without importing its code.

``locate`` accepts a folder path, a bundled name (``arithmetic``) or ``namespace/name@version``. Ids
are looked up in the local registry first, then among the bundled environments; an active
``envhub.lock`` pins the version and the digest. A local-registry folder is checked against its
install record first (:class:`~envhub.errors.InstalledTreeChangedError` names what changed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from envhub.errors import EnvhubError, EnvNotFoundError, ManifestError, VersionNotFoundError
from envhub.identity.ids import EnvId, parse_env_id
from envhub.identity.manifest import MANIFEST_FILE, Manifest, load_manifest
from envhub.registry import LocalRegistry, bundled_registry
from envhub.registry.lockfile import active_lockfile, check_installed, pin

__all__ = ["Located", "locate"]


@dataclass(frozen=True)
class Located:
    """Where an environment version lives on this machine."""

    folder: Path
    manifest: Manifest
    digest: str | None  # None for a plain folder: computed lazily from its contents
    registry: str  # "folder", "local" or "bundled"
    origin: str = ""  # for "local": the install record's origin (published, bundled, pulled, unknown)
    source: str = ""  # for "local": the folder it was published from, or the registry it was pulled from


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
        origin = source = ""
        if registry is local:  # an installed folder must still be its artifact, so its digest is true
            record = local.verify_installed(entry, version)
            origin, source = record.origin, record.source
        folder = registry.folder(entry, version)
        if folder is None:  # a bundled index that points at archives, not folders
            raise EnvNotFoundError(str(env_id), where=registry.description)
        if lock is not None:
            check_installed(registry, entry, version, lock[1], lock[0])
        return Located(folder, load_manifest(folder), version.digest, label, origin, source)
    raise _most_specific(env_id, errors)


def _most_specific(env_id: EnvId, errors: list[EnvhubError]) -> EnvhubError:
    """A missing version beats a missing name; missing names merge their suggestions."""
    for exc in errors:
        if isinstance(exc, VersionNotFoundError):
            return exc
    suggestions = sorted({s for exc in errors for s in getattr(exc, "suggestions", [])})
    where = "the local registry or the bundled environments"
    return EnvNotFoundError(str(EnvId(env_id.namespace, env_id.name)), where=where, available=suggestions)
