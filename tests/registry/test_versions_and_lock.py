"""Version ranges on the local registry, and envhub.lock honoured by make."""

from __future__ import annotations


import pytest

import envhub
from envhub.errors import DigestMismatchError, LockfileError, VersionConflictError, VersionNotFoundError
from envhub.registry.lockfile import LockEntry, Lockfile, write_lockfile
from envhub.registry import LocalRegistry


@pytest.fixture
def published(home, env_factory):
    reg = LocalRegistry()
    digests = {}
    for v in ("1.0.0", "1.2.0", "1.2.5", "1.3.0", "2.0.0", "2.1.0-rc.1"):
        entry, created = reg.publish(env_factory(version=v))
        assert created
        digests[v] = entry.digest
    return reg, digests


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("1.2.0", "1.2.0"),
        ("^1.2", "1.3.0"),
        ("~1.2", "1.2.5"),
        ("1.2", "1.2.5"),
        ("1", "1.3.0"),
        ("latest", "2.0.0"),
        (None, "2.0.0"),
        ("2.1.0-rc.1", "2.1.0-rc.1"),
    ],
)
def test_ranges_resolve_newest_admitted(published, spec, expected):
    reg, _ = published
    env_id = "acme/adder" + (f"@{spec}" if spec else "")
    assert reg.resolve(env_id)[1].version == expected
    assert envhub.locate(env_id).manifest.version == expected


def test_digest_pin(published):
    reg, digests = published
    assert reg.resolve(f"acme/adder@{digests['1.2.0']}")[1].version == "1.2.0"
    with pytest.raises(VersionNotFoundError):
        reg.resolve("acme/adder@sha256:" + "0" * 64)


def test_missing_version_lists_available(published):
    with pytest.raises(VersionNotFoundError) as info:
        envhub.make("acme/adder@^3")
    assert "1.0.0" in str(info.value) and "2.0.0" in str(info.value)


def test_same_content_is_noop_and_different_content_conflicts(home, env_factory):
    reg = LocalRegistry()
    folder = env_factory()
    first, created = reg.publish(folder)
    again, created_again = reg.publish(folder)
    assert created and not created_again and first.digest == again.digest
    with pytest.raises(VersionConflictError) as info:
        reg.publish(env_factory(extra="changed"))
    assert info.value.existing == first.digest


def test_lockfile_pins_make(published, tmp_path, monkeypatch):
    reg, digests = published
    write_lockfile(tmp_path / "envhub.lock", Lockfile(environments={"acme/adder": LockEntry(version="1.2.0", digest=digests["1.2.0"])}))
    # The lockfile in the working directory wins over "latest".
    assert envhub.locate("acme/adder").manifest.version == "1.2.0"
    assert envhub.locate("adder").manifest.version == "1.2.0"
    env = envhub.make("acme/adder@^1")
    assert env.identity.digest == digests["1.2.0"]
    with pytest.raises(LockfileError, match="does not pin"):
        envhub.locate("acme/adder@2.0.0")


def test_lockfile_refuses_other_digest(published, tmp_path, monkeypatch):
    reg, digests = published
    lock = tmp_path / "other.lock"
    write_lockfile(lock, Lockfile(environments={"acme/adder": LockEntry(version="1.2.0", digest="sha256:" + "1" * 64)}))
    monkeypatch.setenv("ENVHUB_LOCKFILE", str(lock))
    with pytest.raises(LockfileError, match="lock pins"):
        envhub.make("acme/adder")


def test_lockfile_refuses_tampered_artifact(published, tmp_path):
    reg, digests = published
    write_lockfile(tmp_path / "envhub.lock", Lockfile(environments={"acme/adder": LockEntry(version="1.2.0", digest=digests["1.2.0"])}))
    reg.artifact_path(digests["1.2.0"]).write_bytes(b"tampered")
    with pytest.raises(DigestMismatchError):
        envhub.make("acme/adder")


def test_unreadable_lockfile_is_named(home, tmp_path):
    (tmp_path / "envhub.lock").write_text("{not json")
    with pytest.raises(LockfileError, match="envhub.lock"):
        envhub.locate("arithmetic")
