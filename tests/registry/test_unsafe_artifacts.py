"""A registry that serves hostile archives (with matching digests: whoever controls the index controls
them too): pulling refuses each one, and nothing is left in the local registry."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from envhub.identity.artifact import sha256_digest, unpack
from envhub.errors import ArtifactError, DigestMismatchError
from envhub.identity.index import EnvEntry, Index, VersionEntry
from envhub.runtime.make import pull
from envhub.registry.local import LocalRegistry
from envhub.registry.static import StaticRegistry

MANIFEST = b'namespace = "evil"\nname = "env"\nversion = "1.0.0"\nentrypoint = "m:f"\n'


def archive(*members: tuple[str, bytes | str, str]) -> bytes:
    """``(name, data or link target, kind)`` with kind ``file``, ``symlink`` or ``fifo``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, payload, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.FIFOTYPE
                info.linkname = payload if kind == "symlink" else ""
                tar.addfile(info)
    return gzip.compress(raw.getvalue(), compresslevel=1)


HOSTILE = {
    "tar-slip": archive(("envhub.toml", MANIFEST, "file"), ("../../outside.txt", b"pwned", "file")),
    "absolute": archive(("envhub.toml", MANIFEST, "file"), ("/tmp/envhub-absolute.txt", b"pwned", "file")),
    "symlink": archive(("envhub.toml", MANIFEST, "file"), ("data", "/etc", "symlink"), ("data/passwd", b"x", "file")),
    "fifo": archive(("envhub.toml", MANIFEST, "file"), ("pipe", b"", "fifo")),
    "gzip-bomb": archive(("envhub.toml", MANIFEST, "file"), ("zeros", bytes(48 << 20), "file")),
}


def serve(tmp_path, data: bytes, *, digest: str | None = None) -> StaticRegistry:
    root = tmp_path / "registry"
    (root / "artifacts").mkdir(parents=True)
    (root / "artifacts" / "evil.tar.gz").write_bytes(data)
    version = VersionEntry(version="1.0.0", digest=digest or sha256_digest(data), artifact="artifacts/evil.tar.gz")
    index = Index(environments={"evil/env": EnvEntry(namespace="evil", name="env", versions={"1.0.0": version})})
    (root / "registry.json").write_text(index.to_json())
    return StaticRegistry(root)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_pull_refuses_hostile_archive(case, home, tmp_path):
    local = LocalRegistry(max_unpacked_bytes=16 << 20)
    with pytest.raises(ArtifactError):
        pull("evil/env", source=serve(tmp_path, HOSTILE[case]), local=local)
    assert not (tmp_path / "outside.txt").exists()
    assert "evil/env" not in LocalRegistry().index().environments
    leftovers = [p for p in (home / "tmp").rglob("*")] if (home / "tmp").exists() else []
    assert leftovers == []


def test_wrong_digest_refused_before_unpacking(home, tmp_path):
    good = archive(("envhub.toml", MANIFEST, "file"))
    with pytest.raises(DigestMismatchError):
        pull("evil/env", source=serve(tmp_path, good, digest="sha256:" + "0" * 64))
    assert not (home / "envs").exists()


def test_gzip_bomb_stops_at_the_limit(tmp_path):
    with pytest.raises(ArtifactError, match="expands past"):
        unpack(HOSTILE["gzip-bomb"], tmp_path / "out", max_bytes=1 << 20)
    assert not (tmp_path / "out").exists()
