"""Reproducible artifacts: an environment folder as a ``tar.gz`` identified by its sha256.

Packing the same folder twice gives the same bytes: entries are sorted, mtimes are 0, owners are
root with no names, modes are 0644 or 0755, and the gzip header carries no name or time. Caches and
VCS folders are left out, as is anything matched by a ``.envhubignore`` file (fnmatch patterns).

Unpacking refuses what could escape or exhaust the target: absolute paths, ``..``, links, device
files, and archives that expand past a size or entry-count limit.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from envhub.errors import ArtifactError, DigestMismatchError

ALWAYS_IGNORED = ("__pycache__", "*.pyc", ".git", ".pytest_cache", ".DS_Store", "*.egg-info", ".venv", "*.tar.gz")
IGNORE_FILE = ".envhubignore"
MAX_UNPACKED_BYTES = 1 << 30
MAX_ENTRIES = 100_000


def _ignore_patterns(folder: Path) -> list[str]:
    patterns = list(ALWAYS_IGNORED)
    ignore = folder / IGNORE_FILE
    if ignore.is_file():
        lines = ignore.read_text(encoding="utf-8").splitlines()
        patterns += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return patterns


def iter_files(folder: str | Path) -> list[tuple[str, Path]]:
    """``(archive name, path)`` for every file to pack, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a folder", hint="pass the environment's folder (the one with envhub.toml)")
    patterns = _ignore_patterns(root)
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(
            d for d in dirnames if not any(fnmatch.fnmatch(d, p) or fnmatch.fnmatch((rel_dir / d).as_posix(), p) for p in patterns)
        )
        # Files only: folders are implied by their files, and an empty folder (which git cannot
        # carry) must not make a checkout's artifact differ from the working tree's.
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            if any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch((rel_dir / name).as_posix(), p) for p in patterns):
                continue
            path = Path(dirpath) / name
            if path.is_symlink():
                raise ArtifactError(
                    f"{path} is a symbolic link; artifacts hold plain files only",
                    hint="replace the link with a copy of its target, or list it in .envhubignore",
                )
            entries.append(((rel_dir / name).as_posix(), path))
    return sorted(entries)


def pack_bytes(folder: str | Path) -> bytes:
    """The reproducible ``tar.gz`` of ``folder``, in memory."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for arcname, path in iter_files(folder):
            info = tarfile.TarInfo(arcname)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            data = path.read_bytes()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    # mtime=0 and no file name in the gzip header keep the bytes reproducible.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def folder_digest(folder: str | Path) -> str:
    """The digest the folder's artifact would have."""
    return sha256_digest(pack_bytes(folder))


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half-written.

    The file is readable by its owner only unless ``mode`` says otherwise: the config file relies
    on that; outputs meant to be shared (evaluation reports) pass ``0o644``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode != 0o600:  # mkstemp creates the file 0600
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pack(folder: str | Path, out_dir: str | Path = ".") -> tuple[Path, str]:
    """Write ``<name>-<version>.tar.gz`` of an environment folder into ``out_dir``; return (path, digest)."""
    from envhub.identity.manifest import load_manifest

    manifest = load_manifest(folder)
    data = pack_bytes(folder)
    path = Path(out_dir) / f"{manifest.name}-{manifest.version}.tar.gz"
    write_atomic(path, data)
    return path, sha256_digest(data)


def _check_member(member: tarfile.TarInfo) -> str:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]):
        raise ArtifactError(f"refusing archive entry {name!r}: absolute path")
    if ".." in parts:
        raise ArtifactError(f"refusing archive entry {name!r}: it climbs out of the folder with '..'")
    if member.issym() or member.islnk():
        raise ArtifactError(f"refusing archive entry {name!r}: links are not allowed in artifacts")
    if not (member.isfile() or member.isdir()):
        raise ArtifactError(f"refusing archive entry {name!r}: only plain files and folders are allowed")
    return name


def unpack(
    data: bytes | Path,
    dest: str | Path,
    *,
    expected_digest: str | None = None,
    max_bytes: int = MAX_UNPACKED_BYTES,
    max_entries: int = MAX_ENTRIES,
) -> Path:
    """Verify and unpack an artifact (its bytes, or a file of them, read as a stream) into ``dest``
    (created; must not exist), atomically.

    The digest is checked before anything is written. Entries are extracted into a temporary
    sibling folder, which is renamed to ``dest`` only when everything was extracted.
    """
    if expected_digest is not None:
        actual = file_digest(data) if isinstance(data, Path) else sha256_digest(data)
        if actual != expected_digest:
            raise DigestMismatchError("artifact", expected_digest, actual)
    dest = Path(dest)
    if dest.exists():
        raise ArtifactError(f"{dest} already exists", hint="remove it, or unpack somewhere else")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        total = 0
        count = 0
        try:
            with open(data, "rb") if isinstance(data, Path) else io.BytesIO(data) as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
                for member in tar:
                    count += 1
                    if count > max_entries:
                        raise ArtifactError(f"refusing archive: more than {max_entries} entries")
                    name = _check_member(member)
                    target = tmp / name
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    total += member.size
                    if total > max_bytes:
                        raise ArtifactError(f"refusing archive: it expands past {max_bytes} bytes")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    assert src is not None  # a regular file always has a stream
                    written = 0
                    with open(target, "wb") as out:
                        # Count what is really read, not what the header claims.
                        for chunk in iter(lambda: src.read(1 << 20), b""):
                            written += len(chunk)
                            if written > member.size or total - member.size + written > max_bytes:
                                raise ArtifactError(f"refusing archive: entry {name!r} is larger than declared")
                            out.write(chunk)
                    os.chmod(target, 0o755 if member.mode & 0o100 else 0o644)
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"not a valid tar.gz artifact: {exc}") from exc
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
