import io
import tarfile

import pytest

from envhub.identity.artifact import pack, pack_bytes, sha256_digest, unpack
from envhub.errors import ArtifactError, DigestMismatchError


def make_folder(root):
    (root / "pkg").mkdir(parents=True)
    (root / "envhub.toml").write_text('name = "x"\nversion = "1.0.0"\nentrypoint = "m:f"\n')
    (root / "m.py").write_text("def f(): pass\n")
    (root / "pkg" / "data.txt").write_text("data")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"junk")
    return root


def test_pack_is_reproducible_and_ignores_caches(tmp_path):
    folder = make_folder(tmp_path / "env")
    first = pack_bytes(folder)
    (folder / "m.py").touch()  # a new mtime must not change the artifact
    assert pack_bytes(folder) == first
    path, digest = pack(folder, tmp_path)
    assert path.name == "x-1.0.0.tar.gz" and digest == sha256_digest(path.read_bytes())
    names = tarfile.open(fileobj=io.BytesIO(first)).getnames()
    assert names == ["envhub.toml", "m.py", "pkg/data.txt"]
    (folder / "empty").mkdir()  # git cannot carry an empty folder: it must not change the digest
    assert pack_bytes(folder) == first


def test_unpack_round_trip_and_digest_check(tmp_path):
    data = pack_bytes(make_folder(tmp_path / "env"))
    out = unpack(data, tmp_path / "out", expected_digest=sha256_digest(data))
    assert (out / "pkg" / "data.txt").read_text() == "data"
    with pytest.raises(DigestMismatchError):
        unpack(data, tmp_path / "out2", expected_digest="sha256:" + "0" * 64)
    assert not (tmp_path / "out2").exists()


def evil(member: tarfile.TarInfo, payload: bytes = b"x") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        member.size = len(payload) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return raw.getvalue()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../escape.txt"), "'\\.\\.'"),
        (tarfile.TarInfo("/etc/passwd"), "absolute"),
        (lambda: (t := tarfile.TarInfo("link"), setattr(t, "type", tarfile.SYMTYPE), setattr(t, "linkname", "/etc"))[0], "links"),
        (lambda: (t := tarfile.TarInfo("dev"), setattr(t, "type", tarfile.CHRTYPE))[0], "only plain files"),
    ],
)
def test_unpack_refuses_escapes(tmp_path, member, message):
    member = member() if callable(member) else member
    with pytest.raises(ArtifactError, match=message):
        unpack(evil(member), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_unpack_refuses_archives_that_expand_too_far(tmp_path):
    data = evil(tarfile.TarInfo("big.bin"), b"\0" * (1 << 20))
    assert len(data) < 5000  # a small gzip that expands a lot
    with pytest.raises(ArtifactError, match="expands past"):
        unpack(data, tmp_path / "out", max_bytes=1 << 19)


def test_symlinks_are_refused_when_packing(tmp_path):
    folder = make_folder(tmp_path / "env")
    (folder / "link").symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError, match="symbolic link"):
        pack_bytes(folder)
