"""The LLM-judge client against a real scripted endpoint on 127.0.0.1: parsing, retries, cache, groups."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from envhub import Episode, JudgeCriterion, Rubric
from envhub.errors import CriterionError, JudgeError
from envhub.env.judge import GroupJudge, JudgeClient, parse_group_answer, parse_judge_answer
from envhub.env.rubric import Unscored
from envhub.evaluation.model_server.scripted import ScriptedEndpoint, serve_in_thread


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ENVHUB_HOME", str(tmp_path / "home"))
    for var in ("ENVHUB_JUDGE_BASE_URL", "ENVHUB_JUDGE_MODEL", "ENVHUB_JUDGE_API_KEY", "ENVHUB_JUDGE_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def _episode(answer: str) -> Episode:
    messages = [{"role": "user", "content": "Explain gravity."}, {"role": "assistant", "content": answer}]
    return Episode({"id": "t"}, "t", "test", messages, np.random.default_rng(0), 1)


def grader(messages, body):
    """Scores an answer by its length; a group by rank. Answers as JSON, as asked."""
    prompt = messages[-1]["content"]
    if "# Attempt 1" in prompt:
        n = prompt.count("# Attempt ")
        return json.dumps({"scores": [{"id": i, "score": i / n, "reason": f"rank {i}"} for i in range(1, n + 1)]})
    return 'Sure! {"score": 0.75, "reason": "clear but short"}'


@pytest.fixture
def judge_server(home):
    server = ScriptedEndpoint(grader, hang_s=3.0)
    with serve_in_thread(server.app) as url:
        yield server, url


def test_parse_judge_answer_validates():
    assert parse_judge_answer('x {"score": 1, "reason": "ok"} y').value == 1.0
    assert parse_judge_answer('{"score": "0.5"}').value == 0.5
    for bad in ("no json", '{"verdict": 1}', '{"score": 1.5}', '{"score": true}', '{"score": "high"}', "{bad json}"):
        with pytest.raises(ValueError):
            parse_judge_answer(bad)
    with pytest.raises(ValueError, match=r"attempt\(s\) \[2\]"):
        parse_group_answer('{"scores": [{"id": 1, "score": 0.1}]}', 2)


def test_judge_scores_and_caches_by_prompt_and_model(judge_server):
    server, url = judge_server
    client = JudgeClient(url, "judge-a")
    score = client.score("Explains clearly.", _episode("Mass attracts mass."))
    assert score.value == 0.75 and score.reason == "clear but short"
    body = server.requests[0]
    assert body["model"] == "judge-a" and body["temperature"] == 0.0
    assert body["response_format"]["type"] == "json_schema"  # structured output asked for
    assert "Mass attracts mass." in body["messages"][1]["content"]
    # same prompt, same model: from the cache, no request
    assert JudgeClient(url, "judge-a").score("Explains clearly.", _episode("Mass attracts mass.")).value == 0.75
    assert len(server.requests) == 1
    # another model or another answer: asked again
    JudgeClient(url, "judge-b").score("Explains clearly.", _episode("Mass attracts mass."))
    JudgeClient(url, "judge-a").score("Explains clearly.", _episode("Things fall."))
    assert len(server.requests) == 3


def test_identical_prompts_asked_at_once_make_one_request_and_others_still_go(home):
    # a group of identical replies is judged at once: the first asks, the rest read its cached answer
    server = ScriptedEndpoint(grader, latency_s=0.3)
    with serve_in_thread(server.app) as url, ThreadPoolExecutor(8) as pool:
        same = list(pool.map(lambda _: JudgeClient(url, "judge-a").score("Clear.", _episode("Mass attracts mass.")), range(8)))
        assert [s.value for s in same] == [0.75] * 8
        assert len(server.requests) == 1
        answers = [f"answer {i}" for i in range(4)]
        list(pool.map(lambda a: JudgeClient(url, "judge-a").score("Clear.", _episode(a)), answers))
        assert len(server.requests) == 5  # different prompts are not held back by each other
        # without the cache nothing is shared: each asks
        list(pool.map(lambda _: JudgeClient(url, "judge-a", cache=False).score("Clear.", _episode("Mass attracts mass.")), range(3)))
        assert len(server.requests) == 8


def test_judge_retries_transport_faults_and_malformed_answers(judge_server):
    server, url = judge_server
    server.faults.extend(["429", "500", "malformed", "timeout", "noscore"])
    client = JudgeClient(url, "judge", timeout_s=0.5, max_retries=2, backoff_s=0.01, cache=False)
    assert client.score("rubric", _episode("answer")).value == 0.75
    # 4 transport faults retried inside one ask, then a scoreless answer asked again once
    assert len(server.requests) == 6


def test_judge_without_a_score_is_a_failure_never_a_made_up_score(judge_server, home):
    server, url = judge_server
    server.faults.extend(["noscore"] * 3)
    with pytest.raises(JudgeError, match="no valid answer after 3 attempt"):
        JudgeClient(url, "judge", max_retries=2, cache=False).score("rubric", _episode("answer"))
    # through a rubric: the criterion fails loudly
    server.faults.extend(["noscore"] * 3)
    rubric = Rubric([JudgeCriterion("quality", "Explains clearly.", base_url=url, model="judge", max_retries=2)])
    with pytest.raises(CriterionError, match="quality"):
        rubric.score(_episode("other answer"))
    assert not list((home / "cache" / "judge").rglob("*.json"))  # failures are never cached


def test_judge_dead_endpoint_fails_with_the_url(home):
    client = JudgeClient("http://127.0.0.1:9/v1", "judge", timeout_s=0.5, transport_retries=1, backoff_s=0.01)
    with pytest.raises(JudgeError, match="127.0.0.1:9"):
        client.score("rubric", _episode("answer"))


def test_judge_drops_response_format_when_the_server_rejects_it(judge_server):
    server, url = judge_server
    server.faults.append("400")
    assert JudgeClient(url, "judge", cache=False).score("rubric", _episode("a")).value == 0.75
    assert "response_format" in server.requests[0] and "response_format" not in server.requests[1]


def test_judge_criterion_reads_the_endpoint_from_the_environment(judge_server, monkeypatch):
    _, url = judge_server
    criterion = JudgeCriterion("quality", "Explains clearly.")
    rubric = Rubric([criterion])
    result = rubric.score(_episode("x"))
    assert result.unscored == ("quality",) and result.criteria["quality"].score is None
    monkeypatch.setenv("ENVHUB_JUDGE_BASE_URL", url)
    monkeypatch.setenv("ENVHUB_JUDGE_MODEL", "judge")
    result = rubric.score(_episode("x"))
    assert result.criteria["quality"].score == 0.75 and result.total == 0.75


def test_group_judge_scores_a_group_in_one_call(judge_server, monkeypatch):
    server, url = judge_server
    episodes = [_episode(f"answer {i}") for i in range(4)]
    with pytest.raises(Unscored):
        GroupJudge("Explains clearly.")(episodes)
    monkeypatch.setenv("ENVHUB_JUDGE_BASE_URL", url)
    monkeypatch.setenv("ENVHUB_JUDGE_MODEL", "judge")
    scores = GroupJudge("Explains clearly.")(episodes)
    assert [s.value for s in scores] == [0.25, 0.5, 0.75, 1.0]
    assert len(server.requests) == 1
    prompt = server.requests[0]["messages"][1]["content"]
    assert all(f"answer {i}" in prompt for i in range(4)) and "relative to each other" in prompt
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["scores"]["minItems"] == 4


def test_group_judge_missing_an_attempt_is_a_failure(judge_server):
    server, url = judge_server
    server.answer = lambda messages: json.dumps({"scores": [{"id": 1, "score": 1.0, "reason": "x"}]})
    with pytest.raises(JudgeError, match="no score for attempt"):
        GroupJudge("rubric", base_url=url, model="judge", cache=False)([_episode("a"), _episode("b")])
