import json
from pathlib import Path

import pytest

import envhub
from envhub.errors import EntrypointError, EnvNotFoundError, ManifestError, VersionConflictError, VersionNotFoundError
from envhub.registry import LocalRegistry
from envhub.authoring.scaffold import scaffold

ROOT = Path(__file__).resolve().parents[2]


def test_make_by_bundled_name_namespaced_id_and_folder():
    for ref in ("arithmetic", "envhub/arithmetic", "envhub/arithmetic@1.3.0", "arithmetic@^1", ROOT / "environments/arithmetic"):
        env = envhub.make(ref)
        assert env.identity.ref == "envhub/arithmetic@1.3.0", ref


def test_missing_name_suggests_and_missing_version_lists():
    with pytest.raises(EnvNotFoundError, match="Did you mean `arithmetic`"):
        envhub.make("arithmatic")
    with pytest.raises(VersionNotFoundError, match="available: 1.3.0"):
        envhub.make("envhub/arithmetic@9")


def test_publish_then_make_from_local_registry(tmp_path):
    folder = scaffold("flip", parent=tmp_path, namespace="acme")
    registry = LocalRegistry()
    entry, created = registry.publish(folder)
    assert created and entry.digest.startswith("sha256:")
    assert registry.publish(folder) == (entry, False)  # same content: a no-op
    env = envhub.make("acme/flip@0.1")
    assert env.identity.digest == entry.digest
    (folder / "flip_env.py").write_text((folder / "flip_env.py").read_text() + "\n# changed\n")
    with pytest.raises(VersionConflictError, match="already published") as info:
        registry.publish(folder)
    assert "bump `version`" in info.value.hint
    assert envhub.make("acme/flip").identity.digest == entry.digest  # nothing half-written


def test_pull_bundled_into_local_registry():
    entry, version, created = envhub.pull("arithmetic")
    assert created and version.version == "1.3.0"
    assert envhub.pull("arithmetic")[2] is False
    local = LocalRegistry()
    assert (local.folder(entry, version) / "envhub.toml").is_file()
    assert envhub.locate("arithmetic").registry == "local"


def test_entrypoint_errors_are_named(tmp_path):
    folder = scaffold("broken", parent=tmp_path)
    (folder / "broken_env.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(EntrypointError, match="local/broken@0.1.0.*ModuleNotFoundError"):
        envhub.make(folder)
    (folder / "broken_env.py").write_text("x = 1\n")
    with pytest.raises(EntrypointError, match="has no attribute `make_env`"):
        envhub.make(folder)
    with pytest.raises(ManifestError, match="no such folder"):
        envhub.make(str(tmp_path / "nowhere") + "/")


def test_registry_json_is_not_stale():
    from envhub.registry.indexing import build_index

    expected = build_index(ROOT / "environments", root=ROOT).to_json()
    current = (ROOT / "registry.json").read_text()
    assert json.loads(current) == json.loads(expected), "registry.json is stale: run `envhub index environments`"
