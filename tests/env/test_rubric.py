import pytest

from envhub import JudgeCriterion, Rubric, Score, criterion
from envhub.env.core import Episode
from envhub.errors import CriterionError


def episode(answer: str) -> Episode:
    import numpy as np

    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": answer}]
    return Episode({"id": "t", "answer": "4"}, "t", "train", messages, np.random.default_rng(0), 1)


@criterion(weight=3)
def exact(ep):
    return ep.completion == ep.task["answer"]


@criterion(weight=1)
def short(ep):
    return Score(float(len(ep.completion) < 3), f"{len(ep.completion)} chars")


def test_weighted_mean_with_reasons():
    result = Rubric([exact, short]).score(episode("4"))
    assert result.total == 1.0
    result = Rubric([exact, short]).score(episode("five"))
    assert result.total == 0.0
    assert result.criteria["short"].reason == "4 chars"
    result = Rubric([exact, short]).score(episode("44"))
    assert result.total == pytest.approx(0.25)


def test_zero_weight_is_reported_not_rewarded():
    rubric = Rubric([exact, criterion(lambda e: 1.0, name="info_only", weight=0)])
    result = rubric.score(episode("3"))
    assert result.total == 0.0 and result.criteria["info_only"].score == 1.0


def test_hash_is_stable_and_changes_with_weights_and_code():
    assert Rubric([exact, short]).hash == Rubric([short, exact]).hash
    assert Rubric([exact, short]).hash != Rubric([exact, criterion(short.fn, weight=2)]).hash

    @criterion(name="exact", weight=3)
    def other_exact(ep):
        return ep.completion.strip() == ep.task["answer"]

    assert Rubric([exact]).hash != Rubric([other_exact]).hash


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda e: 1.2, "outside"),
        (lambda e: float("nan"), "outside"),
        (lambda e: "yes", "expected a float"),
        (lambda e: 1 / 0, "raised ZeroDivisionError"),
    ],
)
def test_bad_criteria_are_named(check, message):
    rubric = Rubric([criterion(check, name="bad_one")])
    with pytest.raises(CriterionError, match=f"`bad_one`.*{message}"):
        rubric.score(episode("4"))


def test_invalid_rubrics_refused():
    with pytest.raises(CriterionError, match="unique"):
        Rubric([exact, exact])
    with pytest.raises(CriterionError, match="weight"):
        criterion(lambda e: 1, name="neg", weight=-1)
    with pytest.raises(CriterionError, match="at least one"):
        Rubric([])


def test_judge_without_endpoint_is_unscored_not_invented(monkeypatch):
    monkeypatch.delenv("ENVHUB_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("ENVHUB_JUDGE_MODEL", raising=False)
    rubric = Rubric([exact, JudgeCriterion("helpful", "Is the answer helpful?", weight=1)])
    result = rubric.score(episode("4"))
    assert result.criteria["helpful"].score is None
    assert "ENVHUB_JUDGE_BASE_URL" in result.criteria["helpful"].reason
    assert result.unscored == ("helpful",)
    assert result.total == 1.0  # the total covers the criteria that did score
    assert result.to_dict()["unscored"] == ["helpful"]


def test_judge_model_is_part_of_the_hash_when_scoring(monkeypatch):
    rubric = Rubric([exact, JudgeCriterion("helpful", "Is it helpful?")])
    monkeypatch.setenv("ENVHUB_JUDGE_MODEL", "judge-a")
    first = rubric.hash
    monkeypatch.setenv("ENVHUB_JUDGE_MODEL", "judge-b")
    assert rubric.hash != first
