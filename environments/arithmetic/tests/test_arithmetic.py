from pathlib import Path

import pytest
from gymnasium.utils.env_checker import check_env

import envhub
from envhub.errors import InvalidOptionError, TaskNotFoundError
from envhub.authoring import validate

FOLDER = Path(__file__).resolve().parents[1]


def test_passes_validation_and_check_env():
    report = validate(FOLDER)
    assert report.ok, report.failures
    for level in ("starter", "easy", "medium", "hard"):
        check_env(envhub.make(FOLDER, level=level), skip_render_check=True)


@pytest.mark.parametrize(
    ("answer", "reward", "correct", "fmt"),
    [
        ("<answer>{r}</answer>", 1.0, 1.0, 1.0),
        ("The result is {r}.", 0.8, 1.0, 0.0),
        ("<answer>{r}</answer> <answer>{r}</answer>", 0.8, 1.0, 0.0),
        ("<answer>{w}</answer>", 0.2, 0.0, 1.0),
        ("<answer>about {r}</answer>", 0.0, 0.0, 0.0),
        ("", 0.0, 0.0, 0.0),
    ],
)
def test_rubric(answer, reward, correct, fmt):
    env = envhub.make(FOLDER, level="medium")
    env.reset(seed=4)
    result = env.episode.task["answer"]
    _, got, terminated, truncated, info = env.step(answer.format(r=result, w=result + 1))
    assert terminated and not truncated
    assert got == pytest.approx(reward)
    assert info["rubric"]["criteria"]["correct"]["score"] == correct
    assert info["rubric"]["criteria"]["answer_format"]["score"] == fmt


def test_splits_never_share_a_problem_and_task_ids_replay():
    env = envhub.make(FOLDER, level="easy")
    seen = {}
    for split in ("train", "test"):
        problems = set()
        for seed in range(300):
            obs, info = env.reset(seed=seed, options={"split": split})
            problems.add(obs[-1]["content"])
            seen.setdefault(split, info["task_id"])
        seen[split + "-problems"] = problems
    assert not seen["train-problems"] & seen["test-problems"]
    obs, info = env.reset(options={"task_id": seen["test"], "split": "test"})
    assert info["task_id"] == seen["test"]
    with pytest.raises(TaskNotFoundError, match="other split"):
        env.reset(options={"task_id": seen["test"], "split": "train"})


def test_levels_and_bad_level():
    env = envhub.make(FOLDER, level="hard")
    obs, _ = env.reset(seed=1)
    assert obs[-1]["content"].count(" ") >= 5  # three operands
    with pytest.raises(InvalidOptionError, match="level"):
        envhub.make(FOLDER, level="impossible")


def test_starter_problems_stay_small_and_the_instructions_share_the_user_turn():
    env = envhub.make(FOLDER, level="starter")
    for seed in range(50):
        obs, info = env.reset(seed=seed)
        assert [m["role"] for m in obs] == ["user"]
        instructions, question = obs[0]["content"].rsplit("\n\n", 1)
        assert "<answer>12</answer>" in instructions and info["task_id"].startswith("starter-")
        operands = [int(n) for n in question.removeprefix("What is ").rstrip("?").split(" ")[::2]]
        assert all(0 <= n <= 20 for n in operands), question
