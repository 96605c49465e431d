"""`envhub export dataset` and envhub.integrations.datasets, read back with the real `datasets` package."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import datasets
import pytest
from interophelpers import bisect
from typer.testing import CliRunner

import envhub
from envhub.cli import build_app
from envhub.errors import ArtifactError, EvalRunError
from envhub.evaluation.model_server.scripted import ScriptedEndpoint, serve_in_thread
from envhub.evaluation.runner import EvalConfig, run_eval
from envhub.integrations.datasets import PARQUET_FILE, run_rows, task_rows

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ENVHUB_HOME", str(tmp_path / "envhub-home"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "envhub-home"


def export(*args: str):
    return runner.invoke(build_app(), ["export", "dataset", *args], catch_exceptions=True)


def read_both(out: Path) -> tuple[datasets.Dataset, datasets.Dataset]:
    saved = datasets.load_from_disk(str(out))
    parquet = datasets.load_dataset("parquet", data_files=str(out / PARQUET_FILE), split="train")
    return saved, parquet


def test_generated_tasks_export_and_replay(tmp_path):
    out = tmp_path / "tasks"
    result = export("guess-number", "--split", "test", "-n", "5", "--env-arg", "level=easy", str(out))
    assert result.exit_code == 0, result.output
    assert "wrote 5 test tasks of envhub/guess-number@" in result.output
    saved, parquet = read_both(out)
    assert saved.to_list() == parquet.to_list() and len(saved) == 5
    assert set(saved.column_names) == {"prompt", "task_id", "split", "seed", "env", "env_digest", "env_kwargs", "rubric_hash"}
    env = envhub.make("guess-number", level="easy")
    assert len(set(saved["task_id"])) == 5
    for row in saved:
        assert row["split"] == "test" and row["env"] == env.identity.ref
        assert row["env_digest"] == env.identity.digest and row["env_digest"].startswith("sha256:")
        assert json.loads(row["env_kwargs"]) == {"level": "easy"} and row["rubric_hash"] == env.rubric.hash
        obs, info = env.reset(seed=row["seed"], options={"task_id": row["task_id"], "split": "test"})
        assert row["prompt"] == [{"role": m["role"], "content": m["content"]} for m in obs]
        assert info["task_id"] == row["task_id"] and row["task_id"].startswith("easy-")


def test_listed_tasks_come_in_the_environments_order(tmp_path):
    env = envhub.make("sql")
    ids = [t["id"] for t in env.tasks("test")]
    rows = task_rows(env, split="test", n=3)
    assert [r["task_id"] for r in rows] == ids[:3]
    assert [r["task_id"] for r in task_rows(env, split="test")] == ids  # every listed task without n
    out = tmp_path / "sql"
    assert export("sql", "--split", "test", str(out)).exit_code == 0
    assert datasets.load_from_disk(str(out))["task_id"] == ids


def test_eval_run_episodes_export_with_rewards_and_breakdown(tmp_path):
    with serve_in_thread(ScriptedEndpoint(partial(bisect, unreadable_turn=1)).app) as url:
        config = EvalConfig(env="guess-number", env_kwargs={"level": "easy"}, out_dir=str(tmp_path / "run"),
                            base_url=url, model="scripted", episodes=4, samples=1, concurrency=2, report=False)
        run_eval(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    out = tmp_path / "episodes"
    result = export("--from-run", str(tmp_path / "run"), str(out))
    assert result.exit_code == 0, result.output
    assert "wrote 4 episodes of" in result.output
    saved, parquet = read_both(out)
    assert saved.to_list() == parquet.to_list() and len(saved) == 4
    by_key = {(r["task_id"], r["sample"]): r for r in records}
    env = envhub.make("guess-number", level="easy")
    for row in saved:
        record = by_key[(row["task_id"], row["sample"])]
        assert row["reward"] == pytest.approx(record["reward"]) and row["error"] is None
        assert row["step_rewards"] == record["step_rewards"] and row["turns"] == record["turns"] > 1
        assert row["env"] == env.identity.ref and row["env_digest"] == env.identity.digest
        assert row["rubric_hash"] == env.rubric.hash and row["model"] == "scripted"
        assert {c["name"]: (c["score"], c["weight"], c["reason"]) for c in row["rubric"]} == {
            name: (c["score"], c["weight"], c["reason"]) for name, c in record["rubric"]["criteria"].items()
        }
        # The exported conversation replays to the same reward in a fresh environment.
        env.reset(seed=row["seed"], options={"split": row["split"]})
        total = 0.0
        for message in row["messages"]:
            if message["role"] == "assistant":
                _, reward, terminated, truncated, info = env.step(message["content"])
                total += reward
        assert terminated or truncated
        assert total == pytest.approx(row["reward"]) and info["rubric"]["total"] == pytest.approx(row["rubric_total"])
    # The first turn of every episode was unreadable: the breakdown says so.
    assert all(next(c for c in row["rubric"] if c["name"] == "guess_format")["score"] < 1 for row in saved)


def test_a_training_run_or_a_missing_folder_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(EvalRunError, match="is a training run from before the trainer wrote rollouts.jsonl"):
        run_rows(tmp_path / "train")
    result = export("--from-run", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert isinstance(result.exception, EvalRunError) and "has no results.jsonl or rollouts.jsonl" in str(result.exception)


def test_an_existing_output_needs_overwrite_and_arguments_are_counted(tmp_path):
    out = tmp_path / "tasks"
    assert export("arithmetic", "-n", "2", str(out)).exit_code == 0
    again = export("arithmetic", "-n", "3", str(out))
    assert isinstance(again.exception, ArtifactError)
    assert len(datasets.load_from_disk(str(out))) == 2  # untouched
    assert export("arithmetic", "-n", "3", "--overwrite", str(out)).exit_code == 0
    assert len(datasets.load_from_disk(str(out))) == 3
    assert not list(tmp_path.glob(".*partial"))
    assert export("arithmetic").exit_code != 0  # no OUT
    assert export("--from-run", str(tmp_path), "arithmetic", str(out)).exit_code != 0
