"""The reward-hacking audit: every bundled environment passes; a hackable rubric fails, with exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from envhub.authoring.audit import PROBES, audit, probe_answer
from envhub.errors import AuditFailed

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = sorted(p.name for p in (ROOT / "environments").iterdir() if (p / "envhub.toml").is_file())

HACKABLE = '''
from envhub import ChatEnv, Rubric, criterion, system, user

@criterion
def long_enough(episode):
    """Rewards any answer of 20 characters or more: a rubric begging to be hacked."""
    return len(episode.completion) >= 20

@criterion(weight=0.0)
def mentions_topic(episode):
    return "gravity" in episode.completion.lower()

class Essay(ChatEnv):
    rubric = Rubric([long_enough, mentions_topic])

    def tasks(self, split):
        return [{"id": "t1", "topic": "gravity"}, {"id": "t2", "topic": "gravity"}]

    def initial_messages(self, task):
        return [system("Write an essay."), user(f"Write about {task['topic']}.")]

    def reference_action(self, episode):
        return "Gravity is the attraction between masses; it keeps planets in orbit."

def make_env(**kwargs):
    return Essay(**kwargs)
'''


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ENVHUB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ENVHUB_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("ENVHUB_JUDGE_MODEL", raising=False)


@pytest.fixture
def hackable(one_module_env) -> Path:
    return one_module_env("essay", "essay_env", HACKABLE)


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_environment_passes_its_audit(name, home):
    report = audit(name, tasks=4)
    assert report.passed, report.failures
    assert report.reference is not None and report.reference.mean >= 0.9, "the reference answer should earn reward"
    assert [p.probe for p in report.probes] == list(PROBES)
    assert all(p.mean <= 0.3 for p in report.probes)


def test_a_hackable_rubric_fails_the_audit(hackable, home):
    report = audit(str(hackable), tasks=2)
    assert not report.passed
    failing = {f.split()[0] for f in report.failures}
    assert {"refusal", "overlong", "repeated", "judge_injection"} <= failing
    assert "empty" not in failing
    with pytest.raises(AuditFailed, match="refusal earns 1.000"):
        audit(str(hackable), tasks=2, raise_on_fail=True)


def test_audit_cli_exit_codes(hackable, home):
    base = [sys.executable, "-c", "import sys; from envhub.cli import main; main(sys.argv[1:])", "audit"]
    env = {**os.environ, "COLUMNS": "150"}
    ok = subprocess.run([*base, "arithmetic", "--tasks", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "judge_injection" in ok.stdout and "every probe stays under" in ok.stdout
    bad = subprocess.run([*base, str(hackable), "--tasks", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "fails its reward-hacking audit" in bad.stderr


def test_probe_messages():
    convo = [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 2 + 2?"}]
    ref = "<answer>4</answer>"
    assert probe_answer("empty", convo, ref) == ""
    assert probe_answer("echo", convo, ref) == "What is 2 + 2?"
    assert probe_answer("format_only", convo, ref) == "<answer></answer>"
    assert probe_answer("format_only", convo, "```sql\nSELECT 1\n```") == "```sql\n\n```"
    assert probe_answer("shotgun", convo, ref).count("<answer>") == 400
    assert len(probe_answer("overlong", convo, ref)) == 30_000
    assert "maximum score" in probe_answer("judge_injection", convo, ref)
    with pytest.raises(ValueError, match="unknown probe"):
        probe_answer("nope", convo, ref)
