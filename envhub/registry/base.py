"""The interface every registry backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from envhub.identity.index import EnvEntry, Index, VersionEntry
from envhub.identity.ids import EnvId, parse_env_id


class Registry(ABC):
    """A read-only view of a registry; writable backends add ``publish``."""

    #: How errors name this registry ("the local registry (~/.envhub)", a URL...).
    description: str = "registry"

    @abstractmethod
    def index(self) -> Index:
        """The registry's current index."""

    @abstractmethod
    def fetch(self, entry: EnvEntry, version: VersionEntry) -> bytes:
        """The artifact of ``version``, verified against its digest."""

    def resolve(self, env_id: EnvId | str) -> tuple[EnvEntry, VersionEntry]:
        """The entry and the version that ``env_id`` names (newest matching release)."""
        if isinstance(env_id, str):
            env_id = parse_env_id(env_id)
        entry = self.index().find(env_id, where=self.description)
        return entry, entry.resolve(env_id.version)


def search_index(index: Index, text: str) -> list[EnvEntry]:
    """Environments whose name, description or tags hold every word of ``text`` (case-insensitive)."""
    words = text.lower().split()
    hits = []
    for key, entry in sorted(index.environments.items()):
        hay = " ".join([key, entry.description, " ".join(entry.tags)]).lower()
        if all(w in hay for w in words):
            hits.append(entry)
    return hits
