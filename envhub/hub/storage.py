"""Where the hub keeps artifacts: a small interface, content-addressed keys, and the local-disk
implementation. An S3 bucket implements the same four methods (put with an atomic overwrite is a
plain PutObject there)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from envhub.identity.artifact import write_atomic


def artifact_key(digest: str) -> str:
    return f"artifacts/{digest.removeprefix('sha256:')}.tar.gz"


class Storage(ABC):
    """Blob storage. ``put`` must be atomic: a key holds all of its bytes or does not exist."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...


class LocalDiskStorage(Storage):
    """Blobs as files under ``root``, written through a temporary file and a rename."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key {key!r} escapes the storage root")
        return path

    def put(self, key: str, data: bytes) -> None:
        write_atomic(self._path(key), data)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
