"""Issue 14, trainer side: a run that cannot work fails at once, runs are never mixed or lost,
the bar moves within a step, and the CPU preset is a size a CPU trains."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from envhub.errors import TrainRunError
from envhub.integrations.datasets import run_rows
from trainers.config import SIZE_PRESETS, make_config
from trainers.grpo import _step_errors, resolve_output_dir, train
from trainers.outputs import Progress
from trainers.rollout import Rollout

#: The smallest run that still samples and updates: 2 groups of 2, 8 tokens each.
TINY = {
    "prompts_per_step": 2,
    "group_size": 2,
    "max_new_tokens": 8,
    "steps": 1,
    "checkpoint_every": 1,
    "progress": False,
    "lora_r": 2,
    "lora_alpha": 4,
    "dynamic_sampling": False,
    "on_hack": "off",
}
TINY_FLAGS = [
    "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "8", "--lora-r", "2",
    "--lora-alpha", "4", "--no-dynamic-sampling", "--on-hack", "off", "--no-progress",
]  # fmt: skip


def _cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "envhub", "train", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def _config(out: Path, env: str = "arithmetic?level=easy", **overrides):
    return make_config("cispo", envs=[env], overrides={**TINY, "output_dir": str(out), **overrides})


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- 1. a run that cannot do what was asked fails at once ----------------------------------------


@pytest.mark.parametrize("env, named", [("arithmetc", "arithmetc"), ("arithmetic?levle=easy", "levle")])
def test_typo_env_or_kwargs_exits_1_before_any_episode(tmp_path, env, named):
    out = tmp_path / "run"
    result = _cli(env, "--output-dir", str(out), cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert named in result.stdout + result.stderr
    assert not (out / "metrics.jsonl").exists()


def test_a_bad_kwarg_value_is_refused_before_the_first_step(tmp_path):
    result = _cli("arithmetic", "--env-kwargs", "level=superhard", "--output-dir", str(tmp_path / "run"), cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "superhard" in result.stderr and "next:" in result.stderr


_ALWAYS_RAISES = '''
from envhub import ChatEnv, Rubric, criterion, system, user

@criterion
def said_yes(episode):
    return "yes" in episode.completion

class Broken(ChatEnv):
    max_turns = 2
    rubric = Rubric([said_yes], name="broken")

    def tasks(self, split):
        return [{"id": "t0"}, {"id": "t1"}]

    def initial_messages(self, task):
        return [system("Say yes."), user(task["id"])]

    def respond(self, episode, action):
        raise RuntimeError("the simulator lost its state")

def make_env(**kwargs):
    return Broken(**kwargs)
'''


def _broken_env(root: Path) -> Path:
    folder = root / "broken"
    folder.mkdir()
    (folder / "envhub.toml").write_text(
        'namespace = "tests"\nname = "broken"\nversion = "1.0.0"\ndescription = "Every step raises."\n'
        'entrypoint = "broken_env:make_env"\nlicense = "MIT"\nmax_turns = 2\n'
    )
    (folder / "broken_env.py").write_text(_ALWAYS_RAISES)
    return folder


@pytest.mark.slow
def test_a_step_whose_episodes_all_error_stops_the_run_with_exit_1(tmp_path):
    env = _broken_env(tmp_path)
    out = tmp_path / "run"
    result = _cli(str(env), "--steps", "3", "--output-dir", str(out), *TINY_FLAGS, cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "every episode of step 1 (4 of 4) ended in an error (EnvironmentFailure: 4)" in result.stderr
    assert "failed in respond: RuntimeError: the simulator lost its state" in result.stderr  # the first, on screen
    assert not (out / "adapter").exists() and not (out / "metrics.jsonl").exists()


def _episode(error: str | None = None) -> Rollout:
    return Rollout(group=0, env_index=0, task_seed=0, error=error)


def test_partial_error_rates_are_reported_and_a_threshold_stops_the_run():
    step = [_episode("RuntimeError: boom"), _episode(), _episode(), _episode("TimeoutError: slow")]
    line, stop = _step_errors(3, step, None)
    assert not stop and "step 3: 2 of 4 episodes (50%) ended in an error (RuntimeError: 1, TimeoutError: 1)" in line
    assert "the first: RuntimeError: boom" in line
    assert _step_errors(3, step, 0.5)[1] is False  # at the threshold: goes on
    line, stop = _step_errors(3, step, 0.25)
    assert stop and "more than the --max-error-rate of 25%" in line
    assert _step_errors(3, [_episode(), _episode()], 0.0) == (None, False)
    with pytest.raises(ValueError, match="max_error_rate must be in"):
        train(make_config("cispo", envs=["arithmetic"], overrides={"max_error_rate": 1.5}))


# ---- 2. runs are never mixed or lost ------------------------------------------------------------


def test_a_run_that_names_no_folder_gets_a_new_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = make_config("cispo", envs=["arithmetic?level=easy"])
    assert config.output_dir is None
    named = Path(resolve_output_dir(config).output_dir)
    assert named.parent == Path("runs/train") and named.name.startswith("arithmetic-default-")
    named.mkdir(parents=True)  # that run started: the next one gets another folder
    assert Path(resolve_output_dir(config).output_dir) != named
    assert resolve_output_dir(_config(tmp_path / "mine")).output_dir == str(tmp_path / "mine")


@pytest.mark.slow
def test_a_folder_resumes_only_its_own_run(tmp_path):
    out = tmp_path / "run"
    notes: list[str] = []
    train(_config(out), log=notes.append)
    assert [n.split(" (")[0] for n in notes] == ["generation: transformers"]  # and nothing about resuming
    notes.clear()

    # every episode of the step, as an eval record plus the trainer's fields
    rows = _rows(out / "rollouts.jsonl")
    assert len(rows) == 4 and {r["step"] for r in rows} == {1}
    first = rows[0]
    assert first["env"]["ref"].startswith("envhub/arithmetic@") and first["env"]["digest"].startswith("sha256:")
    assert first["env_kwargs"] == {"level": "easy"} and first["messages"][-1]["role"] == "assistant"
    assert "correct" in first["rubric"]["criteria"] and first["rubric_hash"].startswith("sha256:")
    assert all(r["trained"] and r["advantage"] is not None for r in rows)
    episodes = run_rows(out)  # `envhub export dataset --from-run RUN` reads a training run too
    assert [(e["step"], e["trained"]) for e in episodes] == [(1, True)] * 4
    assert episodes[0]["env"] == first["env"]["ref"] and "correct" in [c["name"] for c in episodes[0]["rubric"]]

    # another environment's kwargs in the same folder: refused with the difference, nothing touched
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(TrainRunError, match=r"holds another run \(envs: arithmetic\?level=easy -> arithmetic\?level=hard\)") as caught:
        train(_config(out, env="arithmetic?level=hard"), log=notes.append)
    assert "--overwrite" in caught.value.hint
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(TrainRunError, match=r"holds another run \(algo: \"cispo\" -> \"grpo\""):
        train(make_config("grpo", envs=["arithmetic?level=easy"], overrides={**TINY, "output_dir": str(out)}))

    # the same run, more steps: resumes and says so; the provenance still describes this run
    resumed = train(_config(out, steps=2), log=notes.append)
    assert len(notes) == 2 and notes[0] == f"resuming from step 1 of 2 in {out}"
    assert notes[1].startswith("generation: transformers (")
    assert [m["step"] for m in resumed.metrics] == [1, 2]
    assert [r["step"] for r in _rows(out / "rollouts.jsonl")] == [1] * 4 + [2] * 4
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["config"]["envs"][0]["kwargs"] == {"level": "easy"} and provenance["resumed_from_step"] == 1
    run = json.loads((out / "run.json").read_text())
    assert len(run["resumed"]) == 1

    # all of it done: nothing trained, nothing rewritten
    stamp = (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = train(_config(out, steps=2), log=notes.append)
    assert "already holds all 2 steps of this run: nothing to train" in notes[-1]
    assert [m["step"] for m in again.metrics] == [1, 2]
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp

    # --overwrite starts afresh
    fresh = train(_config(out, env="arithmetic?level=hard", overwrite=True), log=notes.append)
    assert [m["step"] for m in fresh.metrics] == [1]
    assert {r["env_kwargs"]["level"] for r in _rows(out / "rollouts.jsonl")} == {"hard"}


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_steps_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    # The default checkpoint_every (10): before, Ctrl-C at step 2 lost step 1 and the rerun started at 0.
    command = [sys.executable, "-m", "envhub", "train", "arithmetic", "--env-kwargs", "level=easy", "--steps", "3",
               "--output-dir", str(out), *TINY_FLAGS]  # fmt: skip
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 420
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no step finished in 7 minutes"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    done = (out / "metrics.jsonl").read_text().count("\n")
    assert done in (1, 2) and "Traceback" not in stderr
    assert f"interrupted: {done} of 3 steps done in {out}" in stdout
    assert (out / "checkpoints" / f"step-{done:06d}" / "adapter_model.safetensors").is_file()

    result = _cli("arithmetic", "--env-kwargs", "level=easy", "--steps", "3", "--output-dir", str(out), *TINY_FLAGS, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"resuming from step {done} of 3 in {out}" in result.stdout
    assert [row["step"] for row in _rows(out / "metrics.jsonl")] == [1, 2, 3]
    # the end of the run: first vs last reward, per criterion, and where the files are
    assert "reward/mean " in result.stdout and "(step 1 -> 3, 3 steps)" in result.stdout
    assert "  correct: " in result.stdout and f"adapter: {out / 'adapter'}" in result.stdout
    assert "metrics.jsonl, rollouts.jsonl, provenance.json" in result.stdout


# ---- 3. live progress ---------------------------------------------------------------------------


def _screen(buffer: io.StringIO) -> list[str]:
    """The bar's frames as plain lines (cursor and erase codes removed)."""
    text = buffer.getvalue()
    for code in ("\x1b[2K", "\x1b[?25l", "\x1b[?25h", "\x1b[1A"):
        text = text.replace(code, "")
    return [line for line in text.replace("\r", "\n").split("\n") if line.strip()]


@pytest.mark.parametrize("width", [80, 160])
def test_the_bar_moves_within_a_step_shows_the_whole_count_and_fits_the_terminal(width):
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=True, color_system=None)
    progress = Progress(10000, 0, enabled=True, console=console, time_budget_s=600)
    progress.rollouts(3, 16)
    progress.bar.refresh()
    progress.update({"step": 1, "reward/mean": 0.25, "loss/policy": 0.01, "perf/step_s": 60.0, "perf/rollout_s": 45.0})
    progress.rollouts(8, 16)
    progress.bar.refresh()
    progress.updating()
    progress.bar.refresh()
    completed = progress.bar.tasks[0].completed
    progress.close()
    frames = _screen(buffer)
    assert all(len(line) <= width for line in frames), frames
    assert any("step 1/10000" in f and "rollouts 3/16" in f for f in frames)  # the full count, not "10/10…"
    assert any("step 2/10000" in f and "rollouts 8/16" in f for f in frames)
    assert any("step 2/10000" in f and "update" in f for f in frames)
    assert completed == pytest.approx(1.75)  # 1 step, then the rollouts' share of step 2 (45 of its 60 s)
    left = progress.remaining_s()
    assert left is not None and 600 < left <= 660  # the budget (600 s), then the step that passes it ends
    assert any("eta 0:1" in f for f in frames)
    if width >= 160:
        assert any("reward 0.250" in f for f in frames)


# ---- 4. a size a CPU trains ---------------------------------------------------------------------


def test_the_cpu_preset_sits_between_the_algo_preset_and_the_flags(tmp_path):
    config = make_config("dapo", envs=["arithmetic"], overrides={"preset": "cpu"})
    assert (config.group_size, config.max_new_tokens, config.prompts_per_step) == (4, 32, 4)
    assert config.algo == "dapo" and config.epsilon_high == 0.28
    assert make_config("cispo", envs=["arithmetic"], overrides={"preset": "cpu", "group_size": 8}).group_size == 8
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "cpu"\nmax_new_tokens = 48\n')
    from_file = make_config(None, envs=["arithmetic"], config_file=toml)
    assert (from_file.group_size, from_file.max_new_tokens) == (4, 48)  # the file beats the preset
    with pytest.raises(ValueError, match=r"unknown preset 'gpu': expected one of \['cpu'\]"):
        make_config("cispo", envs=["arithmetic"], overrides={"preset": "gpu"})
    assert all(getattr(config, name) == value for name, value in SIZE_PRESETS["cpu"].items())
