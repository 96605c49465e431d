"""The group judge as a training reward, against a real scripted OpenAI-compatible endpoint on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from envhub.evaluation.model_server.scripted import ScriptedEndpoint, serve_in_thread  # noqa: E402
from envhub.env.judge import GroupJudge  # noqa: E402
from trainers.config import make_config  # noqa: E402
from trainers.grpo import judge_groups, train  # noqa: E402
from trainers.rollout import Rollout  # noqa: E402


def rank_by_attempt(messages, body):
    """Attempt i of n scores i / n: every group gets a spread of scores, one call per group."""
    n = messages[-1]["content"].count("# Attempt ")
    return json.dumps({"scores": [{"id": i, "score": i / n, "reason": f"rank {i}"} for i in range(1, n + 1)]})


@pytest.fixture
def judge_url(tmp_path, monkeypatch):
    monkeypatch.setenv("ENVHUB_HOME", str(tmp_path / "home"))  # the judge's answer cache goes here
    for var in ("ENVHUB_JUDGE_BASE_URL", "ENVHUB_JUDGE_MODEL", "ENVHUB_JUDGE_API_KEY", "ENVHUB_JUDGE_CACHE"):
        monkeypatch.delenv(var, raising=False)
    server = ScriptedEndpoint(rank_by_attempt)
    with serve_in_thread(server.app) as url:
        yield server, url


def _rollout(group: int, reply: str, reward: float) -> Rollout:
    messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": reply}]
    return Rollout(group=group, env_index=0, task_seed=group, messages=messages, reward=reward, shaped_reward=reward)


def test_each_group_is_judged_in_one_call_and_its_scores_weighted_into_the_reward(judge_url):
    server, url = judge_url
    groups = [[_rollout(0, "4", 1.0), _rollout(0, "five", 0.0)], [_rollout(1, "<answer>4</answer>", 1.0), _rollout(1, "?", 0.0), _rollout(1, "", 0.0)]]
    errors = judge_groups(GroupJudge("Answers correctly.", base_url=url, model="judge"), groups, weight=0.5)
    assert errors == [] and len(server.requests) == 2
    assert [r.judge_score for r in groups[0]] == [0.5, 1.0]
    assert [r.shaped_reward for r in groups[0]] == [1.25, 0.5]
    assert [r.judge_score for r in groups[1]] == pytest.approx([1 / 3, 2 / 3, 1.0])
    prompts = {p.count("# Attempt "): p for p in (body["messages"][1]["content"] for body in server.requests)}
    assert "five" in prompts[2] and "<answer>4</answer>" in prompts[3] and "five" not in prompts[3]


def test_a_group_the_judge_fails_on_keeps_no_score(judge_url):
    server, url = judge_url
    server.answer = lambda messages: json.dumps({"scores": [{"id": 1, "score": 1.0, "reason": "only one"}]})
    group = [_rollout(0, "a", 0.0), _rollout(0, "b", 0.0)]
    errors = judge_groups(GroupJudge("rubric", base_url=url, model="judge", cache=False), [group], weight=1.0)
    assert len(errors) == 1 and "no score for attempt" in errors[0]
    assert [r.judge_score for r in group] == [None, None] and [r.shaped_reward for r in group] == [0.0, 0.0]


def test_a_judge_prompt_without_an_endpoint_is_refused_up_front(judge_url):
    with pytest.raises(ValueError, match="judge_prompt needs a judge endpoint"):
        make_config("cispo", overrides={"judge_prompt": "Answers correctly."})
    _, url = judge_url
    config = make_config("cispo", overrides={"judge_prompt": "x", "judge_base_url": url, "judge_model": "judge"})
    assert config.judge_weight == 1.0


@pytest.mark.slow
def test_training_with_the_group_judge_as_reward(judge_url, tmp_path):
    server, url = judge_url
    settings = {
        "prompts_per_step": 2,
        "group_size": 2,
        "max_new_tokens": 8,
        "steps": 1,
        "progress": False,
        "lora_r": 4,
        "lora_alpha": 8,
        "dynamic_sampling": False,
        "overlong_shaping": False,
        "judge_prompt": "The answer is correct and inside <answer></answer> tags.",
        "judge_base_url": url,
        "judge_model": "judge",
        "judge_weight": 0.5,
        "output_dir": str(tmp_path / "run"),
    }
    result = train(make_config("cispo", envs=["arithmetic?level=easy"], overrides=settings))
    (row,) = result.metrics
    assert row["episodes/errors"] == 0 and row["judge/errors"] == 0
    # preflight's one-token probe of the judge endpoint comes first; then one scoring call per group
    probe, *scoring = server.requests
    assert probe["max_tokens"] == 1 and "response_format" not in probe
    assert len(scoring) == 2
    for body in scoring:  # the judge saw both attempts at the task, as the policy wrote them
        assert body["messages"][1]["content"].count("# Attempt ") == 2 and "<assistant>" in body["messages"][1]["content"]
    assert row["reward/judge_mean"] == pytest.approx(0.75)  # attempts score 1/2 and 2/2
    assert row["reward/shaped_mean"] == pytest.approx(row["reward/mean"] + 0.5 * 0.75)
    assert row["groups/kept"] == 2 and row["adv/abs_mean"] > 0  # the judge's spread alone gives signal
    assert result.provenance["config"]["judge_prompt"] == settings["judge_prompt"]
