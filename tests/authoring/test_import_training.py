"""One tiny training step of the reference trainer on each imported kind, with the real default model,
in a fresh process whose peak memory is measured (the issue's bound: under 6 GB)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from envhub.authoring.importers import import_environment

pytest.importorskip("torch")
pytest.importorskip("peft")

PEAK_LIMIT_MB = 6 * 1024

STEP = """
import json, resource, sys
from trainers.config import make_config
from trainers.grpo import train

folder, out, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
settings = {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": tokens, "steps": 1, "checkpoint_every": 1,
            "progress": False, "lora_r": 4, "lora_alpha": 8, "dynamic_sampling": False, "output_dir": out}
result = train(make_config("cispo", envs=[folder], overrides=settings))
row = result.metrics[-1]
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "metrics": row,
                  "adapter": str(result.adapter_dir), "environments": result.provenance["environments"]}))
"""


def _train_one_step(folder: Path, out: Path, max_new_tokens: int) -> dict:
    done = subprocess.run([sys.executable, "-c", STEP, str(folder), str(out), str(max_new_tokens)],
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "source", "options", "tokens"),
    [
        ("reasoning-gym", "reasoning-gym==0.1.25", {"tasks": "letter_counting", "test_size": "20"}, 16),
        ("textarena", "textarena==0.7.4", {"game": "TicTacToe-v0", "max_turns": "6"}, 8),
    ],
    ids=["reasoning-gym", "textarena"],
)
def test_one_training_step_on_an_imported_environment(tmp_path, kind, source, options, tokens):
    pytest.importorskip(kind.replace("-", "_"))
    folder = tmp_path / "env"
    result = import_environment(kind, source, output=folder, options=options)
    run = _train_one_step(folder, tmp_path / "run", tokens)
    metrics = run["metrics"]
    assert metrics["step"] == 1 and metrics["episodes/errors"] == 0 and metrics["episodes/count"] == 4
    assert (Path(run["adapter"]) / "adapter_model.safetensors").is_file()
    (environment,) = run["environments"]
    assert environment["ref"] == result.manifest.ref and environment["rubric_hash"].startswith("sha256:")
    if kind == "textarena":
        assert metrics["episodes/turns_mean"] > 1  # multi-turn: the game went on past the first move
    assert run["peak_mb"] < PEAK_LIMIT_MB, f"peak {run['peak_mb']:.0f} MB"
    print(f"{kind}: one step, peak {run['peak_mb']:.0f} MB")


@pytest.mark.slow
def test_one_training_step_on_an_imported_openenv_environment(tmp_path, reverse_url):
    """The trainer plays an OpenEnv server's episodes through the imported folder (multi-turn)."""
    folder = tmp_path / "env"
    result = import_environment("openenv", reverse_url, output=folder, options={"max_turns": "2"})
    run = _train_one_step(folder, tmp_path / "run", 8)
    metrics = run["metrics"]
    assert metrics["step"] == 1 and metrics["episodes/errors"] == 0 and metrics["episodes/count"] == 4
    assert metrics["episodes/turns_mean"] > 1  # a wrong word gets another try: the episode goes on
    (environment,) = run["environments"]
    assert environment["ref"] == result.manifest.ref
    assert run["peak_mb"] < PEAK_LIMIT_MB, f"peak {run['peak_mb']:.0f} MB"
    print(f"openenv: one step, peak {run['peak_mb']:.0f} MB")


@pytest.mark.slow
@pytest.mark.docker
def test_one_training_step_on_an_imported_harbor_dataset(tmp_path, docker_engine):
    """The trainer's episodes run in the tasks' containers and are scored by the tasks' own tests."""
    dataset = Path(__file__).resolve().parents[1] / "fixtures" / "harbor"
    folder = tmp_path / "env"
    result = import_environment("harbor", str(dataset), output=folder, options={"max_turns": "2"})
    run = _train_one_step(folder, tmp_path / "run", 16)
    metrics = run["metrics"]
    assert metrics["step"] == 1 and metrics["episodes/errors"] == 0 and metrics["episodes/count"] == 4
    (environment,) = run["environments"]
    assert environment["ref"] == result.manifest.ref
    assert run["peak_mb"] < PEAK_LIMIT_MB, f"peak {run['peak_mb']:.0f} MB"
    print(f"harbor: one step, peak {run['peak_mb']:.0f} MB")
