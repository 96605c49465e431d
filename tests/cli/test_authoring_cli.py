"""The authoring commands through the real `envhub` entry point, as a person runs them."""

import subprocess
import sys

import pytest


def envhub(*args, cwd=None, env=None, input=None):
    return subprocess.run(
        [sys.executable, "-m", "envhub", *args], cwd=cwd, env=env, input=input, capture_output=True, text=True, timeout=300
    )


def test_init_validate_pack_publish_make(tmp_path):
    assert envhub("init", "word-flip", "--namespace", "acme", cwd=tmp_path).returncode == 0
    result = envhub("validate", "word-flip", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks pass" in result.stdout
    first = envhub("archive", "word-flip", "-o", "a", cwd=tmp_path)
    second = envhub("archive", "word-flip", "-o", "b", cwd=tmp_path)
    digest = first.stdout.split()[-1]
    assert digest.startswith("sha256:") and digest == second.stdout.split()[-1]
    assert (tmp_path / "a" / "word-flip-0.1.0.tar.gz").read_bytes() == (tmp_path / "b" / "word-flip-0.1.0.tar.gz").read_bytes()
    assert envhub("publish", "word-flip", cwd=tmp_path).returncode == 0
    code = "import envhub; e = envhub.make('acme/word-flip@0.1'); print(e.identity.digest)"
    made = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert made.stdout.strip() == digest


def test_play_a_multi_turn_environment_by_typing(tmp_path):
    result = envhub("play", "guess-number", "--seed", "1", input="<guess>50</guess>\n\n")
    assert result.returncode == 0, result.stderr
    assert "assistant" in result.stdout and "user" in result.stdout


def test_known_errors_are_one_line_with_next_step_and_exit_1(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "envhub.toml").write_text('name = "Bad Name"\nversion = "one"\n')
    result = envhub("validate", "bad", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr and "next:" in result.stderr
    result = envhub("play", "arithmatic")
    assert result.returncode == 1 and "Did you mean `arithmetic`" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_tracebacks(tmp_path):
    import os

    env = {**os.environ, "ENVHUB_DEBUG": "1"}
    result = envhub("play", "arithmatic", env=env)
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_index_check_detects_staleness(tmp_path):
    environments = tmp_path / "environments"
    environments.mkdir()
    assert envhub("init", "one", "--parent", str(environments)).returncode == 0
    assert envhub("index", str(environments)).returncode == 0
    assert envhub("index", str(environments), "--check").returncode == 0
    (environments / "one" / "README.md").write_text("changed\n")
    result = envhub("index", str(environments), "--check")
    assert result.returncode == 1 and "stale" in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["validate", "--help"]])
def test_help(args):
    assert envhub(*args).returncode == 0
