"""``envhub.lock``: the exact environment versions a project (a training run, an evaluation) uses.

::

    {"format": 1,
     "environments": {
       "envhub/arithmetic": {"version": "1.0.0", "digest": "sha256:...", "requested": "^1",
                             "image_digest": null, "registry": "bundled"}}}

``envhub lock NAME...`` writes it. When a lockfile is found (``ENVHUB_LOCKFILE``, else ``envhub.lock``
in the working directory) ``envhub.make`` resolves a locked name to its pinned version and refuses
an installed artifact whose digest differs from the one in the lock.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from envhub.identity.artifact import write_atomic
from envhub.errors import LockfileError
from envhub.identity.ids import DEFAULT_NAMESPACE, EnvId, match_version

LOCK_FILE = "envhub.lock"
LOCK_ENV = "ENVHUB_LOCKFILE"
LOCK_FORMAT = 1


class LockEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: str
    digest: str
    requested: str = "latest"
    image_digest: str | None = None
    registry: str | None = None


class Lockfile(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: int = LOCK_FORMAT
    environments: dict[str, LockEntry] = Field(default_factory=dict)

    def find(self, env_id: EnvId) -> tuple[str, LockEntry] | None:
        """The locked ``(full name, entry)`` for ``env_id``; a bare name matches any namespace, ``envhub`` first."""
        if env_id.namespace is not None:
            key = f"{env_id.namespace}/{env_id.name}"
            return (key, self.environments[key]) if key in self.environments else None
        keys = sorted(
            (k for k in self.environments if k.split("/", 1)[-1] == env_id.name),
            key=lambda k: (not k.startswith(DEFAULT_NAMESPACE + "/"), k),
        )
        return (keys[0], self.environments[keys[0]]) if keys else None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def lockfile_path() -> Path | None:
    """``$ENVHUB_LOCKFILE``, else ``./envhub.lock`` when it exists, else None."""
    override = os.environ.get(LOCK_ENV)
    if override:
        return Path(override)
    path = Path.cwd() / LOCK_FILE
    return path if path.is_file() else None


def read_lockfile(path: str | Path) -> Lockfile:
    path = Path(path)
    try:
        return Lockfile.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise LockfileError(str(path), "file not found", hint=f"unset {LOCK_ENV}, or write it with `envhub lock NAME...`") from None
    except (OSError, ValidationError, ValueError) as exc:
        raise LockfileError(str(path), f"not a valid lockfile: {exc}") from exc


def write_lockfile(path: str | Path, lock: Lockfile) -> Path:
    path = Path(path)
    write_atomic(path, lock.to_json().encode())
    return path


def active_lockfile() -> tuple[Path, Lockfile] | None:
    """The lockfile in force, read, or None."""
    path = lockfile_path()
    return (path, read_lockfile(path)) if path is not None else None


def pin(env_id: EnvId, lock: Lockfile, path: Path) -> EnvId:
    """``env_id`` with its version replaced by the locked one (unchanged when not locked).

    A version written in the id must admit the locked version, or the lock and the caller disagree.
    """
    found = lock.find(env_id)
    if found is None:
        return env_id
    key, entry = found
    if env_id.version is not None:
        admitted = match_version(env_id.version, [entry.version], digests={entry.version: entry.digest})
        if admitted is None:
            raise LockfileError(
                str(path),
                f"`{env_id}` asks for a version the lock does not pin ({key}@{entry.version}, {entry.digest})",
                hint="ask for the locked version, or run `envhub lock` again to move the pin",
            )
    namespace, name = key.split("/", 1)
    return EnvId(namespace, name, entry.version)


def check_digest(full_name: str, version: str, digest: str | None, lock: Lockfile, path: Path) -> None:
    """Refuse an installed version whose digest is not the locked one."""
    entry = lock.environments.get(full_name)
    if entry is None or entry.version != version:
        return
    if digest is None or digest != entry.digest:
        raise LockfileError(
            str(path),
            f"{full_name}@{version} is installed with digest {digest}, but the lock pins {entry.digest}",
            hint=f"remove it and pull it again (`envhub pull {full_name}@{version}`), or re-lock if the change is intended",
        )


def check_installed(registry, entry, version, lock: Lockfile, path: Path) -> None:
    """:func:`check_digest` for a version found in ``registry``, re-hashing a stored archive when there is one."""
    check_digest(entry.full_name, version.version, version.digest, lock, path)
    artifact_path = getattr(registry, "artifact_path", None)
    if artifact_path is not None and entry.full_name in lock.environments and artifact_path(version.digest).is_file():
        registry.fetch(entry, version)  # raises DigestMismatchError when the stored bytes changed
