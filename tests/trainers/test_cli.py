"""``envhub train``: a typer command whose options are TrainConfig's fields, with their docstrings as help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trainers.cli import parse_args
from trainers.config import EnvSpec, field_docs


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _flat(text: str) -> str:
    """Help output with the table borders gone and wrapped lines joined."""
    return " ".join(text.replace("│", " ").split())


def test_help_lists_every_option_with_its_field_docstring():
    result = _run("-m", "envhub", "train", "--help")
    assert result.returncode == 0, result.stderr
    shown = _flat(result.stdout)
    assert "--steps" in shown and "--group-size" in shown
    assert "Number of training steps (one rollout batch, then its optimizer step(s), per step)." in shown
    assert "G: episodes sampled per task; advantages are relative within a group." in shown
    for field in field_docs():
        if field.name != "envs":  # the ENV arguments
            assert f"--{field.name.replace('_', '-')}" in shown, field.name
        assert " ".join(field.doc.replace("``", "`").split()) in shown, field.name
    assert "--no-dynamic-sampling" in shown and "--config" in shown and "--env-kwargs" in shown
    # a preset that changes a default says so
    assert "False; dapo, cispo: True" in shown


def test_python_dash_m_trainers_is_the_same_command():
    result = _run("-m", "trainers", "--help")
    assert result.returncode == 0, result.stderr
    assert "--group-size" in result.stdout and "python -m trainers" in result.stdout


def test_a_flag_overrides_the_toml_file(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('algo = "dapo"\nsteps = 50\ngroup_size = 4\nresume = true\n[[envs]]\nname = "guess-number"\n')
    config = parse_args(["--config", str(toml), "--steps", "3"])
    assert (config.algo, config.steps, config.group_size) == ("dapo", 3, 4)  # the flag wins, the rest stays
    assert config.envs == [EnvSpec("guess-number")]
    config = parse_args(["--config", str(toml), "--algo", "grpo", "--group_size=6", "--resume", "false"])
    assert (config.algo, config.beta, config.group_size, config.resume) == ("grpo", 0.04, 6, False)
    assert parse_args(["--config", str(toml), "--resume=false"]).resume is False
    assert parse_args(["--config", str(toml), "--no-resume"]).resume is False


def test_flags_are_checked_as_their_field_types(tmp_path):
    import typer

    with pytest.raises(typer.BadParameter, match="steps takes an integer, not '2.5'"):
        parse_args(["--steps", "2.5"])
    with pytest.raises(typer.BadParameter, match="true or false"):
        parse_args(["--resume=maybe"])
    assert parse_args(["--cispo-min-ratio", "none", "--threads", "2"]).cispo_min_ratio is None
    config = parse_args(["arithmetic?level=easy*3", "guess-number", "--env-kwargs", "level=hard,seed_offset=2"])
    assert config.envs == [
        EnvSpec("arithmetic", 3.0, {"level": "easy", "seed_offset": 2}),  # its own level wins
        EnvSpec("guess-number", 1.0, {"level": "hard", "seed_offset": 2}),
    ]
    result = _run("-m", "envhub", "train", "--group-size", "1")
    assert result.returncode != 0 and "group_size must be at least 2" in result.stdout + result.stderr


@pytest.mark.slow
def test_envhub_train_runs_the_config_it_was_given(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("[train]\nlora_r = 2\nlora_alpha = 4\nsteps = 9\n")
    out = tmp_path / "run"
    result = _run("-m", "envhub", "train", "--config", str(toml), "--steps", "0", "--output-dir", str(out), "--no-progress", timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    config = json.loads((out / "provenance.json").read_text())["config"]
    assert (config["steps"], config["lora_r"], config["progress"]) == (0, 2, False)
