"""The local registry: ``$ENVHUB_HOME`` (``~/.envhub``), the embedded default, needing nothing running.

Layout::

    registry.json                         the index
    artifacts/<sha256 hex>.tar.gz         every published or pulled artifact
    envs/<namespace>/<name>/<version>/    its unpacked folder, what ``envhub.make`` loads
    installed/<namespace>/<name>/<version>.json   the sha256 of each file of that folder

Writes take an exclusive file lock, and every file is written to a temporary path and renamed,
so a crash never leaves a half-written version visible: a version exists once the index says so,
and the index is only updated after its artifact, folder and install record are complete. A folder
is checked against its record each time it is located (:meth:`LocalRegistry.verify_installed`).
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from envhub.identity.artifact import MAX_UNPACKED_BYTES, pack_bytes, sha256_digest, unpack, write_atomic
from envhub.errors import (
    ArtifactError,
    DigestMismatchError,
    InstalledTreeChangedError,
    ManifestError,
    VersionConflictError,
)
from envhub.identity.ids import EnvId, parse_env_id
from envhub.identity.index import EnvEntry, Index, VersionEntry, read_index
from envhub.identity.manifest import MANIFEST_FILE, Manifest, load_manifest
from envhub.paths import envhub_home
from envhub.registry.base import Registry
from envhub.registry.installed import (
    OWN_ORIGINS,
    PUBLISHED,
    UNKNOWN,
    InstallRecord,
    changed_files,
    read_record,
    tree_hashes,
)


class LocalRegistry(Registry):
    def __init__(self, home: str | Path | None = None, *, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> None:
        self.home = Path(home) if home is not None else envhub_home()
        self.max_unpacked_bytes = max_unpacked_bytes  # an artifact expanding past this is refused
        self.description = f"the local registry ({self.home})"

    @property
    def index_path(self) -> Path:
        return self.home / "registry.json"

    def index(self) -> Index:
        return read_index(self.index_path)

    def resolve(self, env_id: EnvId | str) -> tuple[EnvEntry, VersionEntry]:
        """As :meth:`Registry.resolve`; a bare name names only versions whose install record says they
        are the user's own or envhub's (see :mod:`envhub.registry.names`), never one pulled from elsewhere."""
        if isinstance(env_id, str):
            env_id = parse_env_id(env_id)
        if env_id.namespace is not None:
            return super().resolve(env_id)
        from envhub.registry.names import refuse_bare, same_name

        index = self.index()
        own = []
        for entry in same_name(index, env_id):
            versions = {v: ve for v, ve in entry.versions.items() if self._origin(entry, ve) in OWN_ORIGINS}
            if versions:
                own.append(entry.model_copy(update={"versions": versions}))
        if not own:
            refuse_bare(index, env_id, where=self.description)
            return super().resolve(env_id)  # the name is not here at all: the usual not-found error
        own.sort(key=lambda e: (e.namespace != "envhub", e.namespace))
        return own[0], own[0].resolve(env_id.version)

    def _origin(self, entry: EnvEntry, version: VersionEntry) -> str:
        record = read_record(self.record_path(entry, version))
        return record.origin if record is not None and record.digest == version.digest else UNKNOWN

    def artifact_path(self, digest: str) -> Path:
        return self.home / "artifacts" / f"{digest.removeprefix('sha256:')}.tar.gz"

    def folder(self, entry: EnvEntry, version: VersionEntry) -> Path:
        return self.home / "envs" / entry.namespace / entry.name / version.version

    def record_path(self, entry: EnvEntry, version: VersionEntry) -> Path:
        return self.home / "installed" / entry.namespace / entry.name / f"{version.version}.json"

    def verify_installed(self, entry: EnvEntry, version: VersionEntry) -> InstallRecord:
        """The version's install record, once its folder matches it file for file.

        Raises :class:`InstalledTreeChangedError` naming what was changed, added or removed since
        the install. A version installed before records existed gets one from its checked artifact
        (its origin then is ``unknown``).
        """
        folder = self.folder(entry, version)
        path = self.record_path(entry, version)
        record = read_record(path)
        if record is None or record.digest != version.digest:
            record = self._record_from_artifact(entry, version)
            record.write(path)
        changed = changed_files(folder, record)
        if changed:
            raise InstalledTreeChangedError(record.ref, str(folder), changed, expected=version.digest)
        return record

    def _record_from_artifact(self, entry: EnvEntry, version: VersionEntry) -> InstallRecord:
        data = self.fetch(entry, version)  # checked against the digest
        staging = self.home / "tmp"
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging) as tmp:
            unpacked = unpack(data, Path(tmp) / "tree", max_bytes=self.max_unpacked_bytes)
            return InstallRecord(f"{entry.full_name}@{version.version}", version.digest, tree_hashes(unpacked))

    def fetch(self, entry: EnvEntry, version: VersionEntry) -> bytes:
        path = self.artifact_path(version.digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{entry.full_name}@{version.version}: artifact {path} is missing") from None
        actual = sha256_digest(data)
        if actual != version.digest:
            raise DigestMismatchError(f"{entry.full_name}@{version.version} in {self.home}", version.digest, actual)
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def publish(self, folder: str | Path) -> tuple[VersionEntry, bool]:
        """Publish an environment folder; returns (entry, created). The same content again is a no-op."""
        load_manifest(folder)  # named errors for a bad manifest before anything else
        data = pack_bytes(folder)
        return self.install(data, origin=PUBLISHED, origin_source=str(Path(folder).resolve()))

    def install(
        self,
        data: bytes,
        *,
        expected_digest: str | None = None,
        expected_ref: str | None = None,
        source: str = "",
        origin: str = UNKNOWN,
        origin_source: str = "",
    ) -> tuple[VersionEntry, bool]:
        """Add an artifact to the registry; its manifest says which version it is.

        Refuses different content under an existing version (:class:`VersionConflictError`), and an
        artifact whose manifest is not the ``namespace/name@version`` it was fetched as. ``origin``
        and ``origin_source`` go into the install record (``source`` names the artifact in errors).
        """
        digest = sha256_digest(data)
        if expected_digest is not None and digest != expected_digest:
            raise DigestMismatchError(source or "artifact", expected_digest, digest)
        with self._locked():
            staging = self.home / "tmp"
            staging.mkdir(parents=True, exist_ok=True)
            scratch = staging / digest.removeprefix("sha256:")[:16]
            shutil.rmtree(scratch, ignore_errors=True)
            try:
                unpack(data, scratch, expected_digest=digest, max_bytes=self.max_unpacked_bytes)
                manifest = load_manifest(scratch)
                if expected_ref is not None and manifest.ref != expected_ref:
                    raise ArtifactError(
                        f"{source or 'artifact'}: its manifest says {manifest.ref}, but it was published as {expected_ref}",
                        hint="the registry entry is wrong or was tampered with; tell its owner",
                    )
                record = InstallRecord(manifest.ref, digest, tree_hashes(scratch), origin=origin, source=origin_source)
                index = self.index()
                key = manifest.full_name
                existing = index.environments.get(key)
                if existing and manifest.version in existing.versions:
                    old = existing.versions[manifest.version]
                    if old.digest != digest:
                        raise VersionConflictError(manifest.ref, old.digest, digest)
                    self._restore(existing, old, scratch, record)  # a changed folder is put back
                    return old, False
                version = VersionEntry(
                    version=manifest.version,
                    digest=digest,
                    artifact=str(self.artifact_path(digest).relative_to(self.home)),
                    size=len(data),
                    description=manifest.description,
                    tags=manifest.tags,
                    license=manifest.license,
                    max_turns=manifest.max_turns,
                )
                entry = existing or EnvEntry(namespace=manifest.namespace, name=manifest.name)
                write_atomic(self.artifact_path(digest), data)
                target = self.folder(entry, version)
                shutil.rmtree(target, ignore_errors=True)  # a leftover of a crash before the index update
                target.parent.mkdir(parents=True, exist_ok=True)
                scratch.rename(target)
                record.write(self.record_path(entry, version))
                entry.versions[manifest.version] = version
                entry.description, entry.tags = manifest.description, manifest.tags
                index.environments[key] = entry
                write_atomic(self.index_path, index.to_json().encode())
                return version, True
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    def _restore(self, entry: EnvEntry, version: VersionEntry, unpacked: Path, record: InstallRecord) -> None:
        """Make an installed version's folder and record those of its artifact, unpacked at ``unpacked``.

        The origin recorded first is kept, unless this install makes the code the user's own or
        envhub's (publishing a folder of the same content vouches for it; pulling never takes that away).
        """
        target = self.folder(entry, version)
        if changed_files(target, record):
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            unpacked.rename(target)
        path = self.record_path(entry, version)
        old = read_record(path)
        if old is not None and old.digest == record.digest and record.origin not in OWN_ORIGINS:
            record = replace(record, origin=old.origin, source=old.source)
        if old != record:
            record.write(path)

    def manifest_of(self, entry: EnvEntry, version: VersionEntry) -> Manifest:
        folder = self.folder(entry, version)
        if not (folder / MANIFEST_FILE).is_file():
            raise ManifestError(str(folder / MANIFEST_FILE), ["missing from the local registry; pull it again"])
        return load_manifest(folder)

    def set_image(self, full_name: str, version: str, *, digest: str, image: str, image_digest: str) -> bool:
        """Record the Docker image built for a version (``envhub build``); False when the version is absent.

        Only a version whose artifact digest is ``digest`` is updated, so an image is never attached
        to other content.
        """
        with self._locked():
            index = self.index()
            entry = index.environments.get(full_name)
            found = entry.versions.get(version) if entry else None
            if found is None or found.digest != digest:
                return False
            if found.image == image and found.image_digest == image_digest:
                return True
            found.image, found.image_digest = image, image_digest
            write_atomic(self.index_path, index.to_json().encode())
            return True
