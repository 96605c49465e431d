"""A read-only registry: a ``registry.json`` plus the artifacts it points at, on disk.

The bundled environments are one: the top-level ``registry.json`` indexes ``environments/``, whose
artifact locations are folders packed on demand (and checked against the indexed digest).
"""

from __future__ import annotations

from pathlib import Path

from envhub.identity.artifact import pack_bytes, sha256_digest
from envhub.errors import DigestMismatchError, RegistryError
from envhub.identity.index import EnvEntry, Index, VersionEntry, read_index
from envhub.paths import bundled_root
from envhub.identity.ids import EnvId, parse_env_id
from envhub.registry.base import Registry
from envhub.registry.names import refuse_bare

INDEX_FILE = "registry.json"


class StaticRegistry(Registry):
    """A registry served from a folder that holds ``registry.json``."""

    def __init__(self, root: str | Path, *, description: str | None = None, bundled: bool = False) -> None:
        self.root = Path(root)
        self.description = description or f"the registry at {self.root}"
        self.bundled = bundled  # the environments that ship with envhub: the only static registry bare names reach
        self._index: Index | None = None

    def resolve(self, env_id: EnvId | str) -> tuple[EnvEntry, VersionEntry]:
        if isinstance(env_id, str):
            env_id = parse_env_id(env_id)
        if not self.bundled:
            refuse_bare(self.index(), env_id, where=self.description)
        return super().resolve(env_id)

    def index(self) -> Index:
        if self._index is None:
            path = self.root / INDEX_FILE
            if not path.is_file():
                raise RegistryError(f"{self.description} has no {INDEX_FILE}", hint="point envhub at a registry folder")
            self._index = read_index(path)
        return self._index

    def fetch(self, entry: EnvEntry, version: VersionEntry) -> bytes:
        location = self.root / version.artifact
        if location.is_dir():
            data = pack_bytes(location)
        elif location.is_file():
            data = location.read_bytes()
        else:
            raise RegistryError(f"{entry.full_name}@{version.version}: artifact {location} is missing")
        actual = sha256_digest(data)
        if actual != version.digest:
            raise DigestMismatchError(f"{entry.full_name}@{version.version}", version.digest, actual)
        return data

    def folder(self, entry: EnvEntry, version: VersionEntry) -> Path | None:
        """The unpacked folder of a version, when the index points at one."""
        location = self.root / version.artifact
        return location if location.is_dir() else None


def bundled_registry() -> StaticRegistry | None:
    """The registry of the environments bundled with envhub, or None outside a source tree."""
    root = bundled_root()
    return StaticRegistry(root, description="the bundled environments", bundled=True) if root else None


def export_static(source: Registry, out_dir: str | Path) -> Index:
    """Write ``source``'s public versions as a static registry: ``registry.json`` plus
    ``artifacts/<sha256 hex>.tar.gz``, servable by any web server or bucket.

    Every artifact is verified against its digest on the way; ``registry.json`` is written last,
    so a reader never sees an index pointing at a missing artifact.
    """
    from envhub.identity.artifact import write_atomic

    out_dir = Path(out_dir)
    src = source.index()
    out = Index(packs=src.packs)
    for key, entry in sorted(src.environments.items()):
        if entry.private:
            continue
        exported = entry.model_copy(deep=True)
        for name, version in entry.versions.items():
            data = source.fetch(entry, version)
            rel = f"artifacts/{version.digest.removeprefix('sha256:')}.tar.gz"
            target = out_dir / rel
            if not (target.is_file() and target.stat().st_size == len(data)):
                write_atomic(target, data)
            exported.versions[name] = version.model_copy(update={"artifact": rel, "size": len(data)})
        out.environments[key] = exported
    write_atomic(out_dir / INDEX_FILE, out.to_json().encode())
    return out
