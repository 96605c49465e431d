"""What an evaluation writes (issue 14): the histogram's bins say what they hold, output files are
world-readable (0644) while secrets stay 0600, and an adapter run names its adapter and training run."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from evalhelpers import solve

from envhub.evaluation.model_server.scripted import ScriptedEndpoint, serve_in_thread
from envhub.evaluation.policies import training_run
from envhub.evaluation.report import render_report, reward_histogram
from envhub.evaluation.results import summarise
from envhub.evaluation.runner import EvalConfig, run_eval
from envhub.identity.artifact import write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_histogram_keeps_full_scores_apart_from_near_misses():
    labels, counts = reward_histogram([1.0, 1.0, 1.0, 0.9, 0.0, 0.2])
    assert labels == [f"{i / 10:.1f}" for i in range(11)]  # 0.0 ... 1.0, each bin labelled by its centre
    assert counts[labels.index("1.0")] == 3 and counts[labels.index("0.9")] == 1
    assert counts[labels.index("0.0")] == 1 and counts[labels.index("0.2")] == 1 and sum(counts) == 6
    # rewards outside [0, 1] (returns of multi-step environments) get bins spanning their range
    labels, counts = reward_histogram([-1.0, 0.5, 3.0])
    assert labels[0].startswith("-1") and labels[-1].endswith("3") and sum(counts) == 3


def test_a_report_bins_one_point_zero_episodes_under_one_point_zero(home, tmp_path):
    def half_bare(messages):  # the right answer, tagged on even results (1.0), bare on odd ones (0.8)
        tagged = solve(messages)
        value = int(re.search(r"-?\d+", tagged).group(0))
        return tagged if value % 2 == 0 else str(value)

    server = ScriptedEndpoint(half_bare)
    with serve_in_thread(server.app) as url:
        run_eval(EvalConfig(env="arithmetic", out_dir=str(tmp_path / "run"), base_url=url, model="scripted", episodes=12))
    records = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    full = sum(r["reward"] == 1.0 for r in records)
    near = sum(abs(r["reward"] - 0.8) < 1e-9 for r in records)
    assert full and near and full + near == 12
    page = (tmp_path / "run" / "report.html").read_text()
    assert f"<title>1.0: {full:.3f}</title>" in page and f"<title>0.8: {near:.3f}</title>" in page
    assert "<title>0.9: 0.000</title>" in page


def test_outputs_are_world_readable_and_secrets_stay_private(endpoint, tmp_path):
    _, url = endpoint
    out = tmp_path / "run"
    run_eval(EvalConfig(env="arithmetic", out_dir=str(out), base_url=url, model="scripted", episodes=2))
    for name in ("results.jsonl", "summary.json", "run.json", "report.html"):
        assert _mode(out / name) & 0o044 == 0o044, name  # group and others can read it
        assert _mode(out / name) == 0o644, name
    write_atomic(tmp_path / "token", b"secret")  # what config files and the like get by default
    assert _mode(tmp_path / "token") == 0o600
    write_atomic(tmp_path / "shared", b"x", mode=0o644)
    assert _mode(tmp_path / "shared") == 0o644


def _fake_training_run(root: Path) -> Path:
    """A run folder laid out as trainers/grpo.py writes it: adapter/ and provenance.json in both."""
    adapter = root / "runs" / "cispo" / "adapter"
    adapter.mkdir(parents=True)
    provenance = {
        "trainer": "envhub.trainers.grpo", "algo": "cispo", "model": {"name": "default", "path": "/models/x"},
        "environments": [{"ref": "envhub/arithmetic@1.3.0", "digest": "sha256:abc"}],
        "config": {"output_dir": str(root / "runs" / "cispo"), "steps": 20},
        "finished_at": "2025-01-01T00:00:00Z", "final_metrics": {"step": 20, "reward/mean": 0.41},
    }  # fmt: skip
    (adapter / "provenance.json").write_text(json.dumps(provenance))
    (adapter.parent / "provenance.json").write_text(json.dumps(provenance))
    return adapter


def test_the_training_run_of_an_adapter_is_read_from_its_provenance(tmp_path):
    adapter = _fake_training_run(tmp_path)
    run = training_run(adapter)
    assert run["algo"] == "cispo" and run["environments"] == ["envhub/arithmetic@1.3.0"]
    assert run["output_dir"] == str(adapter.parent) and run["steps"] == 20 and run["reward_mean"] == 0.41
    (adapter / "provenance.json").unlink()  # the run folder's copy is found too
    assert training_run(adapter)["provenance"] == str(adapter.parent / "provenance.json")
    assert training_run(tmp_path / "nothing-here") is None


def test_an_adapter_run_is_named_in_the_summary_and_the_title(tmp_path):
    adapter = _fake_training_run(tmp_path)
    model = {"kind": "local", "name": "default", "path": "/models/x", "adapter": str(adapter),
             "adapter_run": training_run(adapter)}  # what LocalPolicy.describe() records
    base = {"kind": "local", "name": "default", "path": "/models/x"}
    rec = {"key": "0/0", "task_index": 0, "sample": 0, "reward": 1.0, "error": None, "turns": 1,
           "env": {"ref": "envhub/arithmetic@1.3.0"}}  # fmt: skip
    tuned, plain = summarise([{**rec, "model": model}]), summarise([{**rec, "model": base}])
    assert tuned.adapter == {"path": str(adapter), "training_run": training_run(adapter)}
    assert plain.adapter is None and plain.model_label == "default"
    assert tuned.model_label == f"default + adapter {adapter}"
    page = render_report(tuned, [{**rec, "model": model}])
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert str(adapter) in title and title != re.search(r"<title>(.*?)</title>", render_report(plain, [])).group(1)
    assert "cispo on envhub/arithmetic@1.3.0 20 steps" in page
