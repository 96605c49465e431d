"""Installed folders are checked against the file hashes written at install before anything loads them."""

from __future__ import annotations

import json

import pytest

import envhub
from envhub.errors import DigestMismatchError, InstalledTreeChangedError, UntrustedCodeError
from envhub.registry import LocalRegistry, StaticRegistry, export_static
from envhub.registry.config import set_trusted
from envhub.runtime.make import pull


def _installed(home, env_factory):
    reg = LocalRegistry(home)
    version, _ = reg.publish(env_factory())
    entry = reg.index().environments["acme/adder"]
    return reg, entry, version


def test_install_writes_the_hash_of_every_file(home, env_factory):
    reg, entry, version = _installed(home, env_factory)
    record = json.loads(reg.record_path(entry, version).read_text())
    assert record["digest"] == version.digest and record["ref"] == "acme/adder@1.0.0"
    folder = reg.folder(entry, version)
    assert sorted(record["files"]) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("runtime", ["inprocess", "process"])
def test_a_tampered_installed_file_is_named_and_never_runs(home, env_factory, runtime):
    reg, entry, version = _installed(home, env_factory)
    assert envhub.make("acme/adder@1.0.0").identity.digest == version.digest
    module = reg.folder(entry, version) / "arithmetic_env.py"
    module.write_text(module.read_text() + "\nTAMPERED = True\n")
    with pytest.raises(InstalledTreeChangedError, match=r"arithmetic_env\.py \(changed\)") as info:
        envhub.make("acme/adder@1.0.0", runtime=runtime)
    assert isinstance(info.value, DigestMismatchError) and info.value.expected == version.digest
    assert info.value.changed == ["arithmetic_env.py (changed)"]


def test_added_removed_files_and_planted_bytecode(home, env_factory):
    reg, entry, version = _installed(home, env_factory)
    folder = reg.folder(entry, version)
    envhub.make("acme/adder")  # an in-process import writes __pycache__: a cache, not a change
    (folder / "__pycache__").mkdir(exist_ok=True)
    (folder / "__pycache__" / "arithmetic_env.cpython-311.pyc").write_bytes(b"planted")
    assert envhub.make("acme/adder").identity.digest == version.digest
    assert not (folder / "__pycache__" / "arithmetic_env.cpython-311.pyc").exists()
    (folder / "helper.py").write_text("import os\n")
    (folder / "README.md").unlink()
    with pytest.raises(InstalledTreeChangedError) as info:
        envhub.locate("acme/adder")
    assert info.value.changed == ["helper.py (added)", "README.md (removed)"]


def test_publishing_or_pulling_again_restores_a_changed_folder(home, env_factory, tmp_path):
    source = env_factory()
    reg = LocalRegistry(home)
    version, _ = reg.publish(source)
    entry = reg.index().environments["acme/adder"]
    module = reg.folder(entry, version) / "arithmetic_env.py"
    module.write_text("raise SystemExit('tampered')\n")
    assert reg.publish(source) == (version, False)  # same content: a no-op for the index, the folder is put back
    assert envhub.make("acme/adder").identity.digest == version.digest
    module.write_text("raise SystemExit('tampered')\n")
    export_static(LocalRegistry(tmp_path / "elsewhere"), tmp_path / "static")  # an empty static registry
    other = LocalRegistry(tmp_path / "upstream")
    other.publish(source)
    export_static(other, tmp_path / "static")
    pulled_entry, pulled, created = pull("acme/adder@1.0.0", source=StaticRegistry(tmp_path / "static"), local=reg)
    assert not created and pulled.digest == version.digest
    assert envhub.locate("acme/adder").digest == version.digest


def test_a_version_installed_without_a_record_gets_one_from_its_artifact(home, env_factory):
    reg, entry, version = _installed(home, env_factory)
    reg.record_path(entry, version).unlink()  # as installed by an earlier envhub
    with pytest.raises(UntrustedCodeError):  # nothing says where it came from: not trusted by default
        envhub.make("acme/adder")
    record = json.loads(reg.record_path(entry, version).read_text())
    assert record["digest"] == version.digest and record["origin"] == "unknown"
    set_trusted("acme", True)
    assert envhub.make("acme/adder").identity.digest == version.digest
    (reg.folder(entry, version) / "envhub.toml").write_text((reg.folder(entry, version) / "envhub.toml").read_text() + "\n")
    reg.record_path(entry, version).write_text("{not json")  # a damaged record is rebuilt, not trusted
    with pytest.raises(InstalledTreeChangedError, match=r"envhub\.toml \(changed\)"):
        envhub.make("acme/adder")
