"""The main job end to end, shortened: pull, evaluate, train with CISPO, evaluate again."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quickstart_runs_the_whole_loop(tmp_path):
    out = tmp_path / "qs"
    result = subprocess.run(
        [sys.executable, "-m", "envhub", "quickstart", "--episodes", "4", "--minutes", "0.05", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "before and after" in result.stdout and "What changed on the held-out tasks: correct" in result.stdout
    before = json.loads((out / "eval-before" / "summary.json").read_text())
    after = json.loads((out / "eval-after" / "summary.json").read_text())
    assert before["episodes"] == after["episodes"] == 4 and before["errors"] == after["errors"] == 0
    assert (out / "train" / "adapter" / "adapter_config.json").is_file() or any(out.glob("train/**/adapter_config.json"))
    provenance = json.loads(next(out.glob("train/**/provenance.json")).read_text())
    assert "envhub/arithmetic" in json.dumps(provenance)
