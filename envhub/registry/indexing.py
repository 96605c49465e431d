"""Build the index of a folder of environments (the top-level ``registry.json`` of ``environments/``)."""

from __future__ import annotations

from pathlib import Path

from envhub.identity.artifact import pack_bytes, sha256_digest
from envhub.errors import RegistryError
from envhub.identity.index import EnvEntry, Index, VersionEntry
from envhub.identity.manifest import MANIFEST_FILE, load_manifest


def build_index(environments: str | Path, *, root: str | Path | None = None) -> Index:
    """Index every folder with an ``envhub.toml`` under ``environments``; locations relative to ``root``."""
    environments = Path(environments)
    root = Path(root) if root is not None else environments.parent
    if not environments.is_dir():
        raise RegistryError(f"{environments} is not a folder", hint="pass the folder that holds the environments")
    index = Index()
    for manifest_path in sorted(environments.glob(f"*/{MANIFEST_FILE}")):
        folder = manifest_path.parent
        manifest = load_manifest(folder)
        data = pack_bytes(folder)
        entry = index.environments.setdefault(
            manifest.full_name,
            EnvEntry(namespace=manifest.namespace, name=manifest.name, description=manifest.description, tags=manifest.tags),
        )
        if manifest.version in entry.versions:
            raise RegistryError(f"{manifest.ref} appears twice under {environments}")
        entry.versions[manifest.version] = VersionEntry(
            version=manifest.version,
            digest=sha256_digest(data),
            artifact=folder.resolve().relative_to(root.resolve()).as_posix(),
            size=len(data),
            description=manifest.description,
            tags=manifest.tags,
            license=manifest.license,
            max_turns=manifest.max_turns,
        )
    return index
