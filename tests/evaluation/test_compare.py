"""`eval compare` (issue 14): NaN rows say "no data" (never "worse"), each metric says which direction
is better (an error rate going 1.0 -> 0.0 is "better", not "changed"), every column has a heading,
and the comparison is also written as an HTML page. Real runs against a scripted endpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from evalhelpers import solve

from envhub.errors import EvalRunError
from envhub.evaluation import compare_runs
from envhub.evaluation.compare import COLUMNS, comparison_rows, comparison_table, in_words
from envhub.evaluation.model_server.scripted import ScriptedEndpoint, serve_in_thread
from envhub.evaluation.runner import EvalConfig, run_eval

CLI = [sys.executable, "-c", "import sys; from envhub.cli import main; main(sys.argv[1:])"]


@pytest.fixture
def failed_and_fixed(home, tmp_path):
    """(run A: every episode errored, run B: every episode right), same tasks."""
    broken, good = ScriptedEndpoint(), ScriptedEndpoint(solve)
    broken.faults.extend(["500"] * 6)
    with serve_in_thread(broken.app) as url_a, serve_in_thread(good.app) as url_b:
        with pytest.raises(EvalRunError, match="every episode"):
            run_eval(EvalConfig(env="arithmetic", out_dir=str(tmp_path / "a"), base_url=url_a, model="scripted",
                                episodes=6, max_retries=0))  # fmt: skip
        run_eval(EvalConfig(env="arithmetic", out_dir=str(tmp_path / "b"), base_url=url_b, model="scripted", episodes=6))
    return tmp_path / "a", tmp_path / "b"


def _verdicts(comparison) -> dict[str, tuple[str, str]]:
    return {row[0]: (row[1], row[-1]) for row in comparison_rows(comparison)}


def test_no_data_is_not_worse_and_a_falling_error_rate_is_better(failed_and_fixed):
    a, b = failed_and_fixed
    verdicts = _verdicts(compare_runs(a, b))
    assert verdicts["error_rate"] == ("lower", "better")  # 1.0 -> 0.0
    assert verdicts["reward"] == ("higher", "no data in A")  # A has no scored episode
    assert verdicts["pass_rate"] == ("higher", "no data in A")
    assert verdicts["criterion/correct"] == ("higher", "no data in A")
    assert verdicts["turns"][0] == "neither"
    assert not any(v == "worse" for _, v in verdicts.values())
    backwards = _verdicts(compare_runs(b, a))
    assert backwards["error_rate"] == ("lower", "worse") and backwards["reward"][1] == "no data in B"


def test_every_column_has_a_heading(failed_and_fixed):
    table = comparison_table(compare_runs(*failed_and_fixed))
    headers = [str(c.header) for c in table.columns]
    assert headers == list(COLUMNS) and all(h.strip() for h in headers) and "verdict" in headers


def test_a_significantly_lower_reward_is_worse(home, tmp_path):
    def sloppy(messages):  # right on even answers only
        answer = solve(messages)
        return answer if int(re.search(r"-?\d+", answer).group(0)) % 2 == 0 else "<answer>12345</answer>"

    good, bad = ScriptedEndpoint(solve), ScriptedEndpoint(sloppy)
    with serve_in_thread(good.app) as url_a, serve_in_thread(bad.app) as url_b:
        for name, url in (("a", url_a), ("b", url_b)):
            run_eval(EvalConfig(env="arithmetic", out_dir=str(tmp_path / name), base_url=url, model="scripted",
                                episodes=30, report=False))  # fmt: skip
    verdicts = _verdicts(compare_runs(tmp_path / "a", tmp_path / "b"))
    assert verdicts["reward"] == ("higher", "worse") and verdicts["pass_rate"] == ("higher", "worse")
    assert verdicts["error_rate"][1] == "no clear change"  # no errors on either side
    assert verdicts["criterion/answer_format"][1] == "no clear change"
    # In words, heaviest criterion first, from the sloppy run to the good one: correct rose to 100%.
    words = in_words(compare_runs(tmp_path / "b", tmp_path / "a"))
    assert re.fullmatch(r"correct up, \d+% -> 100% \(\+\d+ points, 95% CI \+\d+ to \+\d+\); "
                        r"answer_format 100% -> 100% \(no clear change\)", words), words  # fmt: skip


def test_in_words_says_no_data_rather_than_a_number(failed_and_fixed):
    assert in_words(compare_runs(*failed_and_fixed)) == "correct: no data in A; answer_format: no data in A"


def test_cli_compare_writes_an_html_page_and_strict_json(failed_and_fixed, tmp_path):
    a, b = failed_and_fixed
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([*CLI, "eval", "compare", str(a), str(b)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "verdict" in done.stdout and "better if" in done.stdout and "no data in A" in done.stdout
    page = b / "compare-a.html"
    assert f"page: {page}" in done.stdout.replace("\n", "")
    html = page.read_text()
    assert all(f"<th>{c}</th>" in html for c in COLUMNS)
    assert "no data in A" in html and "<td class='good'>better</td>" in html and ">worse<" not in html
    assert oct(page.stat().st_mode & 0o777) == "0o644"

    custom = tmp_path / "cmp.html"
    done = subprocess.run([*CLI, "eval", "compare", str(a), str(b), "--json", "--html", str(custom)],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr

    def no_nan(token):
        raise AssertionError(f"{token} is not JSON")

    data = json.loads(done.stdout, parse_constant=no_nan)
    assert data["metrics"]["reward"]["a"] is None and data["metrics"]["reward"]["verdict"] == "no data in A"
    assert data["metrics"]["error_rate"]["better"] == "lower" and data["metrics"]["error_rate"]["verdict"] == "better"
    assert data["html"] == str(custom) and custom.is_file()
