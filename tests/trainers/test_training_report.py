"""The training report: drawn from a run folder, rebuilt by `envhub report RUN`, opened in headless
Chromium, and written by a real (tiny) training run as it goes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envhub.cli import main as envhub_main
from trainers.training_report import render_training_report, svg_lines, write_training_report

ALERT = {
    "step": 4,
    "detector": "answer_collapse",
    "value": 0.75,
    "message": "16 of 16 episodes (100%) over 4 different tasks answer '42'",
    "evidence": [{"task_id": "easy-7", "completion": "<answer>42</answer>", "reward": 0.2}],
    "fix": "pay the format only when the answer is right",
}


def make_run(folder: Path, steps: int = 6) -> Path:
    """A run folder as the trainer writes it: metrics rows (one with an alert), samples, run.json."""
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "reward/mean": 0.1 * s, "reward/criterion/correct": 0.05 * s, "reward/criterion/answer_format": 0.15 * s,
               "completion/len_mean": 40.0 - 5 * s, "entropy/mean": 1.5 - 0.2 * s, "clip/frac": 0.01 * s, "kl/mean": 0.002 * s,
               "hack/answer_collapse": 0.1 * s, "hack/prompt_copy": 0.0}  # fmt: skip
        if s % 3 == 0:
            row.update({"sentinel/reward_mean": 0.05 * s, "sentinel/criterion/correct": 0.04 * s})
        if s == ALERT["step"]:
            row["hack/alerts"] = [ALERT]
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = [
        {"step": s, "samples": [{"task_id": "easy-7", "group": 0, "prompt": "What is 3 + 4?", "completion": f"<answer>{s}</answer>",
                                 "reward": 0.2, "criteria": {"correct": 0.0, "answer_format": 1.0},
                                 "reasons": {"correct": f"answered {s}, expected 7", "answer_format": "one answer tag with an integer"},
                                 "tokens": 7, "truncated": False, "flagged": s == 4}]}  # fmt: skip
        for s in range(1, steps + 1)
    ]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples) + '{"step": 7, "sam')  # a torn line
    (folder / "run.json").write_text(json.dumps({"config": {"algo": "cispo", "envs": [{"name": "arithmetic"}], "steps": 20}}))
    return folder


def test_report_shows_every_plot_the_alert_and_the_samples(tmp_path):
    page = render_training_report(make_run(tmp_path))
    assert page.startswith("<!doctype html>") and "Training of default on arithmetic (cispo)" in page
    for title in ("Training reward per criterion", "Training reward and held-out test reward", "Completion length",
                  "Entropy", "Clip fraction", "KL to the base model", "Monitor: shares"):  # fmt: skip
        assert title in page, title
    assert page.count("<svg") == 7
    # the alert: in the table with its evidence and fix, and marked at step 4 on every timeline
    assert "<td><b>answer_collapse</b></td><td>4</td>" in page and ALERT["fix"] in page and "&lt;answer&gt;42&lt;/answer&gt;" in page
    assert page.count('class="alert-mark"') == 7
    # samples, the newest step first, with their reasons; the torn last line is left out
    assert [int(s) for s in re.findall(r"data-step='(\d+)'", page)] == [6, 5, 4, 3, 2, 1]
    assert "answered 4, expected 7" in page and "alert: answer_collapse" in page
    # self-contained: nothing is fetched
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "<script" not in page


def test_report_of_a_quiet_run_says_no_alert(tmp_path):
    folder = make_run(tmp_path)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("hack/alerts", None)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = render_training_report(folder)
    assert "id='no-alerts'" in page and 'class="alert-mark"' not in page


def test_svg_lines_draws_each_series_and_mark():
    svg = svg_lines("t", {"a": [(1, 0.1), (2, 0.5)], "b": [(1, 0.2), (2, float("nan")), (3, 0.3)]}, y_max=1.0, marks=[(2, "collapse")])
    assert svg.count("<polyline") == 2 and svg.count('class="alert-mark"') == 1 and "step 2: collapse" in svg


def test_envhub_report_rebuilds_it(tmp_path, capsys):
    folder = make_run(tmp_path)
    envhub_main(["report", str(folder)])  # returns: exit status 0
    assert (folder / "report.html").is_file() and f"report: {folder / 'report.html'}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        envhub_main(["report", str(tmp_path / "nothing-here")])
    assert refused.value.code == 1
    assert "holds no metrics.jsonl" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="needs Chromium (Debian: apt-get install -y chromium; make test installs it as root)")
def test_report_opens_in_headless_chromium(tmp_path):
    path = write_training_report(make_run(tmp_path))
    shot = tmp_path / "shot.png"
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    # the browser parsed the page: the plots, their series and the alert are in its DOM
    assert dom.count("<svg") == 7 and dom.count("<polyline") >= 7
    assert "answer_collapse" in dom and 'class="alert-mark"' in dom and "id=\"alerts\"" in dom
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


@pytest.mark.slow
def test_a_training_run_writes_its_report_as_it_goes(tmp_path):
    from trainers.config import make_config
    from trainers.grpo import train

    out = tmp_path / "run"
    config = make_config(
        "cispo",
        envs=["arithmetic?level=easy"],
        overrides={"output_dir": str(out), "steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 12,
                   "max_sampling_rounds": 1, "progress": False, "threads": 2, "checkpoint_every": 2},  # fmt: skip
    )
    assert config.on_hack == "warn"
    train(config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("hack/answer_collapse", "hack/prompt_copy", "hack/repetition", "hack/judge_text", "hack/length", "entropy/mean"):
        assert key in rows[-1], key
    assert "hack/audit_max" in rows[0] and "hack/style_probe" in rows[0]  # the audit runs at the first step
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 2] and samples[0]["samples"][0]["completion"] is not None
    page = (out / "report.html").read_text()
    assert "step 2 · 1 samples" in page or "data-step='2'" in page
    assert "Training reward per criterion" in page and "Entropy" in page


@pytest.mark.slow
def test_on_hack_stop_ends_the_run_at_the_first_alert_and_exits_1(tmp_path):
    """A real run on an environment whose prompt says to answer 42: the base model does, across
    words of different lengths; --on-hack stop saves that step's checkpoint and fails the command."""
    out = tmp_path / "run"
    copycat = Path(__file__).parents[1] / "fixtures" / "copycat"
    flags = ["--algo", "cispo", "--steps", "3", "--prompts-per-step", "4", "--group-size", "2", "--max-new-tokens", "12",
             "--max-sampling-rounds", "1", "--temperature", "0.2", "--lora-r", "2", "--lora-alpha", "4", "--no-progress",
             "--on-hack", "stop", "--output-dir", str(out)]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "envhub", "train", str(copycat), *flags], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})  # fmt: skip
    said = result.stdout + result.stderr
    assert result.returncode == 1, said
    assert "hack alert at step 1 [answer_collapse]" in said and "answer '42'" in said
    assert "stopped by the reward-hacking monitor at step 1 (answer_collapse)" in said and "report.html" in said
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and rows[0]["hack/alerts"][0]["detector"] == "answer_collapse"
    assert (out / "checkpoints" / "step-000001").is_dir() and (out / "report.html").is_file()
    assert json.loads((out / "provenance.json").read_text())["stopped_by_monitor"]["step"] == 1
