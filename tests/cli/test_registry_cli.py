"""The registry commands, through the real CLI (CliRunner and a subprocess), in a temporary ENVHUB_HOME."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from registry_setup import make_env_folder
from typer.testing import CliRunner

from envhub.cli import build_app
from envhub.errors import EnvNotFoundError, VersionConflictError

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def run(*args: str):
    return runner.invoke(build_app(), list(args), catch_exceptions=True)


def test_publish_list_info_versions_search(home, tmp_path):
    folder = make_env_folder(tmp_path)
    result = run("publish", str(folder))
    assert result.exit_code == 0, result.output
    assert "published acme/adder@1.0.0 sha256:" in result.output
    again = run("publish", str(folder))
    assert again.exit_code == 0 and "already published" in again.output
    conflict = run("publish", str(make_env_folder(tmp_path, extra="other bytes")))
    assert isinstance(conflict.exception, VersionConflictError)
    assert run("publish", str(make_env_folder(tmp_path, version="1.1.0"))).exit_code == 0

    listed = run("list")
    assert "acme/adder" in listed.output and "1.0.0, 1.1.0" in listed.output
    info = run("info", "acme/adder", "--json")
    assert info.exit_code == 0, info.output
    data = json.loads(info.output)
    assert data["tags"] == ["math", "single-turn", "verifiable"] and data["description"]
    assert [v["version"] for v in data["versions"]] == ["1.0.0", "1.1.0"]
    assert all(v["digest"].startswith("sha256:") for v in data["versions"])
    assert data["versions"][0]["installed_at"] == str(home / "envs" / "acme" / "adder" / "1.0.0")
    assert run("info", "acme/adder").exit_code == 0
    versions = run("versions", "adder")
    assert [line.split()[0] for line in versions.output.splitlines()] == ["acme/adder@1.0.0", "acme/adder@1.1.0"]
    found = run("search", "arithmetic")
    assert "acme/adder" in found.output
    assert "no environment matches" in run("search", "zzz-nothing").output


def test_pull_bundled_then_cached_then_lock(home, tmp_path):
    pulled = run("pull", "arithmetic@^1")
    assert pulled.exit_code == 0, pulled.output
    assert "pulled envhub/arithmetic@1.3.0" in pulled.output
    assert (home / "envs" / "envhub" / "arithmetic" / "1.3.0" / "envhub.toml").is_file()
    assert "up to date" in run("pull", "arithmetic").output

    locked = run("lock", "arithmetic@^1")
    assert locked.exit_code == 0, locked.output
    lock = json.loads((tmp_path / "envhub.lock").read_text())
    entry = lock["environments"]["envhub/arithmetic"]
    assert entry["version"] == "1.3.0" and entry["digest"].startswith("sha256:") and entry["requested"] == "^1"
    # The lock now governs pulls: a version outside it is refused.
    assert "does not pin" in str(run("pull", "arithmetic@2.0.0").exception)


def test_unknown_name_suggests(home):
    result = run("pull", "arithmetik")
    assert isinstance(result.exception, EnvNotFoundError)
    assert "arithmetic" in str(result.exception)


def test_errors_are_one_line_with_next_step(home, tmp_path):
    env = {**os.environ, "ENVHUB_HOME": str(home)}
    env.pop("ENVHUB_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-c", "from envhub.cli import main; main()", "pull", "arithmetic@9.9.9"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "no version of `envhub/arithmetic` matches `9.9.9`; available: 1.3.0" in proc.stderr
    assert "next:" in proc.stderr


def test_export_static_then_read_it_as_a_registry(home, tmp_path):
    assert run("publish", str(make_env_folder(tmp_path))).exit_code == 0
    out = tmp_path / "site"
    result = run("export-static", str(out))
    assert result.exit_code == 0, result.output
    index = json.loads((out / "registry.json").read_text())
    artifact = index["environments"]["acme/adder"]["versions"]["1.0.0"]["artifact"]
    assert artifact.startswith("artifacts/") and (out / artifact).is_file()
    # A second home pulls from the exported folder, chosen by ENVHUB_REGISTRY.
    other = tmp_path / "home2"
    os.environ["ENVHUB_HOME"] = str(other)
    os.environ["ENVHUB_REGISTRY"] = str(out)
    try:
        pulled = run("pull", "acme/adder@1")
        assert pulled.exit_code == 0, pulled.output
        assert (other / "envs" / "acme" / "adder" / "1.0.0").is_dir()
    finally:
        os.environ.pop("ENVHUB_REGISTRY")


def test_archive_writes_the_artifact_and_pack_names_it(home, tmp_path):
    result = run("archive", str(ROOT / "environments" / "arithmetic"), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "arithmetic-1.3.0.tar.gz").is_file()
    # "pack" means a bundle sold to labs; a folder given to it points at `archive`.
    proc = subprocess.run([sys.executable, "-m", "envhub", "pack", str(ROOT / "environments" / "arithmetic")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "`envhub pack` manages packs" in proc.stderr and "envhub archive" in proc.stderr


def test_config_file_chooses_registry(home, tmp_path):
    from envhub.registry.config import configured_registry, write_config

    assert configured_registry(None) is None
    write_config({"registry": "http://127.0.0.1:9"})
    assert configured_registry(None) == "http://127.0.0.1:9"
    assert configured_registry("/flag/wins") == "/flag/wins"


def test_token_file_is_private(home):
    from envhub.registry.config import save_token, token_for

    path = save_token("http://127.0.0.1:1234/", "ehub_secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token_for("http://127.0.0.1:1234") == "ehub_secret"
