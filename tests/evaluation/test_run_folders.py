"""Runs are never mixed (issue 14): the default folder is new for every run, so the README's commands
in order do not collide; a named folder is resumed only when its recorded settings and the
environment's digest match, and a resume says how much of the run is left."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envhub.errors import EvalRunError
from envhub.evaluation.results import read_results
from envhub.evaluation.runner import EvalConfig, default_out_dir, run_eval

CLI = [sys.executable, "-c", "import sys; from envhub.cli import main; main(sys.argv[1:])"]
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_two_commands_in_a_row_get_two_folders(endpoint, tmp_path):
    _, url = endpoint
    # as in the README: the same environment and model, other settings; before, both went to one
    # folder and the second was refused (or, with the same settings, silently "resumed" the first)
    first = _cli("eval", "arithmetic", "--base-url", url, "-m", "scripted", "-n", "2", cwd=tmp_path)
    second = _cli("eval", "arithmetic", "--base-url", url, "-m", "scripted", "-n", "2", "--temperature", "0", cwd=tmp_path)
    again = _cli("eval", "arithmetic", "--base-url", url, "-m", "scripted", "-n", "2", cwd=tmp_path)
    assert first.returncode == second.returncode == again.returncode == 0, (first.stderr, second.stderr, again.stderr)
    folders = sorted((tmp_path / "runs" / "eval").iterdir())
    assert len(folders) == 3 and all(f.name.startswith("arithmetic-scripted-") for f in folders)
    assert all(len(read_results(f / "results.jsonl")) == 2 for f in folders)
    assert "resuming" not in again.stdout


def test_default_out_dir_is_unique_and_names_the_run(tmp_path):
    one = default_out_dir("arithmetic", model="scripted", root=tmp_path)
    one.mkdir(parents=True)
    two = default_out_dir("arithmetic", model="scripted", root=tmp_path)
    assert one != two and two.name.startswith(one.name)  # the same second: a suffix
    adapter = tmp_path / "runs" / "cispo" / "adapter"
    assert "default+cispo" in default_out_dir("ns/env", adapter=str(adapter), root=tmp_path).name
    assert default_out_dir("ns/env", root=tmp_path).name.startswith("ns_env-default-")


def test_a_resume_says_how_much_is_left(endpoint, tmp_path):
    server, url = endpoint
    out = tmp_path / "run"
    args = ["eval", "arithmetic", "--base-url", url, "-m", "scripted", "-o", str(out)]
    assert _cli(*args, "-n", "3", cwd=tmp_path).returncode == 0
    resumed = _cli(*args, "-n", "8", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out}: running 5 of 8 episodes (3 already done)" in resumed.stdout
    finished = _cli(*args, "-n", "8", cwd=tmp_path)
    assert "already holds all 8 episodes: nothing to run" in finished.stdout
    assert len(server.requests) == 8


def test_a_folder_of_other_settings_is_refused_with_the_difference_and_the_way_out(endpoint, tmp_path):
    _, url = endpoint
    out = tmp_path / "run"
    args = ["eval", "arithmetic", "--base-url", url, "-m", "scripted", "-n", "2", "-o", str(out)]
    assert _cli(*args, cwd=tmp_path).returncode == 0
    refused = _cli(*args, "--env-arg", "level=hard", cwd=tmp_path)
    assert refused.returncode == 1
    assert "env_kwargs: {} -> {'level': 'hard'}" in refused.stderr and "--overwrite" in refused.stderr
    assert _cli(*args, "--env-arg", "level=hard", "--overwrite", cwd=tmp_path).returncode == 0


def test_a_changed_environment_is_not_resumed(endpoint, tmp_path):
    _, url = endpoint
    env = tmp_path / "arithmetic"
    shutil.copytree(ROOT / "environments" / "arithmetic", env, ignore=shutil.ignore_patterns("__pycache__"))
    config = dict(env=str(env), out_dir=str(tmp_path / "run"), base_url=url, model="scripted", report=False)
    run_eval(EvalConfig(**config, episodes=2))
    source = env / "arithmetic_env.py"
    source.write_text(source.read_text() + "\n# edited after the first episodes\n")  # a new digest
    with pytest.raises(EvalRunError, match="its episodes ran on envhub/arithmetic@1.3.0 .* but the environment is now"):
        run_eval(EvalConfig(**config, episodes=4))
    assert len(read_results(tmp_path / "run" / "results.jsonl")) == 2  # nothing was added to the old run
