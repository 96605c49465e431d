"""The install record of a local-registry version: the sha256 of every file of its unpacked folder.

``$ENVHUB_HOME/installed/<namespace>/<name>/<version>.json``, written when the version is
installed, from the folder just unpacked from the artifact whose digest was checked::

    {"format": 1, "ref": "acme/sql@1.2.0", "digest": "sha256:...",
     "origin": "pulled", "source": "http://hub.example:8080",
     "files": {"envhub.toml": "sha256:...", "sql_env.py": "sha256:..."}}

``origin`` says whose code it is (see :mod:`envhub.runtime.trust`): ``published`` from a folder on
this machine (the user's own, ``source`` is the folder), ``bundled`` pulled from the environments
that ship with envhub, ``pulled`` from any other registry (``source`` names it), or ``unknown``
(installed before origins were recorded).

Loading a version compares its folder with ``files`` (:func:`changed_files`): a file changed,
added or removed since the install means the folder no longer is the artifact it claims to be.
That costs one sha256 pass over the folder per process, not a repack: a file's hash is kept while
its size, mtime, ctime and inode stay the same (ctime cannot be set back from user space).
``__pycache__`` folders are never part of an artifact: they are removed when the folder is checked
(an in-process import writes them again), so no stale or planted ``.pyc`` stands in for the source.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from envhub.identity.artifact import file_digest, write_atomic

RECORD_FORMAT = 1
BYTECODE_DIR = "__pycache__"
PUBLISHED, BUNDLED, PULLED, UNKNOWN = "published", "bundled", "pulled", "unknown"
#: Origins whose code is trusted whatever its namespace: the user's own, and envhub's.
OWN_ORIGINS = frozenset({PUBLISHED, BUNDLED})

_hashes: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_hashes_lock = threading.Lock()


@dataclass(frozen=True)
class InstallRecord:
    ref: str
    digest: str
    files: dict[str, str] = field(default_factory=dict)
    origin: str = UNKNOWN
    source: str = ""

    def to_json(self) -> str:
        data = {"format": RECORD_FORMAT, "ref": self.ref, "digest": self.digest, "origin": self.origin,
                "source": self.source, "files": self.files}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    def write(self, path: Path) -> None:
        write_atomic(path, self.to_json().encode())


def read_record(path: Path) -> InstallRecord | None:
    """The record at ``path``; None when there is none or it cannot be read (it is then rebuilt)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return InstallRecord(
            ref=str(data["ref"]),
            digest=str(data["digest"]),
            files=dict(data["files"]),
            origin=str(data.get("origin") or UNKNOWN),
            source=str(data.get("source") or ""),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _hash(path: Path, st: os.stat_result) -> str:
    key = str(path)
    with _hashes_lock:
        known = _hashes.get(key)
    if known is not None and known[0] == _stat_key(st):
        return known[1]
    digest = file_digest(path)
    with _hashes_lock:
        _hashes[key] = (_stat_key(st), digest)
    return digest


def tree_hashes(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``folder``; links are listed, not followed."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        if BYTECODE_DIR in dirnames:
            shutil.rmtree(Path(dirpath) / BYTECODE_DIR, ignore_errors=True)
            dirnames.remove(BYTECODE_DIR)
        dirnames.sort()
        for name in [*filenames, *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))]:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            st = path.lstat()
            found[rel] = "symlink" if path.is_symlink() else _hash(path, st)
    return found


def changed_files(folder: Path, record: InstallRecord) -> list[str]:
    """What differs between ``folder`` and its record, one phrase per file; empty when it matches."""
    if not folder.is_dir():
        return [f"the folder {folder} is missing"]
    now = tree_hashes(folder)
    problems = [f"{rel} (changed)" for rel in sorted(now.keys() & record.files.keys()) if now[rel] != record.files[rel]]
    problems += [f"{rel} (added)" for rel in sorted(now.keys() - record.files.keys())]
    problems += [f"{rel} (removed)" for rel in sorted(record.files.keys() - now.keys())]
    return problems
