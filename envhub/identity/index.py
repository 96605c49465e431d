"""The registry index format: what ``registry.json`` holds, for every registry backend.

::

    {"format": 1,
     "environments": {"envhub/arithmetic": {"namespace": "envhub", "name": "arithmetic",
         "description": "...", "tags": [...],
         "versions": {"1.0.0": {"digest": "sha256:...", "artifact": "environments/arithmetic", ...}}}},
     "packs": {}}

``artifact`` is a location relative to the index: a ``.tar.gz`` file, or (for the index of a
source tree such as the top-level ``registry.json``) a folder that is packed on demand.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from envhub.errors import EnvNotFoundError, RegistryError, VersionNotFoundError
from envhub.identity.ids import DEFAULT_NAMESPACE, EnvId, match_version

INDEX_FORMAT = 1


class VersionEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: str
    digest: str
    artifact: str
    size: int | None = None
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    license: str | None = None
    max_turns: int | None = None
    image: str | None = None
    image_digest: str | None = None


class EnvEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    namespace: str
    name: str
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    private: bool = False
    versions: dict[str, VersionEntry] = Field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    def resolve(self, spec: str | None) -> VersionEntry:
        """The newest version admitted by ``spec``, or :class:`VersionNotFoundError` listing them."""
        digests = {v: e.digest for v, e in self.versions.items()}
        found = match_version(spec, list(self.versions), digests=digests)
        if found is None:
            raise VersionNotFoundError(self.full_name, spec or "latest", sort_versions(self.versions))
        return self.versions[found]


class PackEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    license: str = ""
    environments: list[dict[str, str]] = Field(default_factory=list)
    signature: str | None = None


class Index(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: int = INDEX_FORMAT
    environments: dict[str, EnvEntry] = Field(default_factory=dict)
    packs: dict[str, dict[str, PackEntry]] = Field(default_factory=dict)

    def find(self, env_id: EnvId, *, where: str) -> EnvEntry:
        """The entry for ``env_id`` (a bare name matches any namespace, ``envhub`` first)."""
        if env_id.namespace is not None:
            entry = self.environments.get(f"{env_id.namespace}/{env_id.name}")
        else:
            matches = [e for e in self.environments.values() if e.name == env_id.name]
            matches.sort(key=lambda e: (e.namespace != DEFAULT_NAMESPACE, e.namespace))
            entry = matches[0] if matches else None
        if entry is None:
            known = list(self.environments) + [e.name for e in self.environments.values()]
            raise EnvNotFoundError(str(EnvId(env_id.namespace, env_id.name)), where=where, available=known)
        return entry

    def to_json(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def sort_versions(versions) -> list[str]:
    from envhub.identity.ids import Version

    return [str(v) for v in sorted(Version.parse(v) for v in versions)]


def read_index(path: str | Path) -> Index:
    path = Path(path)
    try:
        return Index.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return Index()
    except (OSError, ValidationError, ValueError) as exc:
        raise RegistryError(
            f"registry index {path} is unreadable: {exc}", hint="restore it from a backup or regenerate it with `envhub index`"
        ) from exc
