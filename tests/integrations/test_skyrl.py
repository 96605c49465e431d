"""envhub environments through the real skyrl-gym package: registry, init/step, rewards as in process."""

from __future__ import annotations

import re

import pytest
import skyrl_gym
from interophelpers import bisect as bisect_guesses
from skyrl_gym.envs.base_text_env import BaseTextEnv

import envhub
from envhub.errors import EpisodeEndedError, InvalidOptionError
from envhub.integrations import skyrl
from envhub.integrations.datasets import task_rows


def solve_arithmetic(messages) -> str:
    question = re.findall(r"What is ([^?\n]*)\?", messages[-1]["content"])[-1]  # the last: after the example
    return f"<answer>{eval(question)}</answer>"  # the bundled generator's own digits and operators


def bisect(messages) -> str:
    return bisect_guesses(messages, unreadable_turn=2)  # the second turn holds no guess


def play_inprocess(name: str, kwargs: dict, row: dict, policy) -> list[tuple[float, bool, dict]]:
    """The same episode through envhub.make in process: (reward, done, info) per step."""
    env = envhub.make(name, **kwargs)
    messages, _ = env.reset(seed=row["seed"], options={"task_id": row["task_id"], "split": row["split"]})
    steps = []
    while True:
        messages, reward, terminated, truncated, info = env.step(policy(messages))
        steps.append((reward, terminated or truncated, info))
        if terminated or truncated:
            return steps


def play_skyrl(env_class: str, kwargs: dict, skyrl_row: dict, policy) -> tuple[BaseTextEnv, list]:
    """The SkyRL generator's loop: make with the row's extras, init with its prompt, step until done."""
    env = skyrl_gym.make(env_class, env_config={"env_kwargs": kwargs}, extras={"extra_info": skyrl_row["extra_info"]})
    history, _ = env.init(skyrl_row["prompt"])
    outputs = []
    while True:
        action = policy(history)
        out = env.step(action)
        history = history + [{"role": "assistant", "content": action}] + out["observations"]
        outputs.append(out)
        if out["done"]:
            return env, outputs


def test_every_bundled_environment_is_registered():
    ids = {f"envhub/{name}" for name in ("arithmetic", "guess-number", "calculator-tools", "sql", "explain-concept")}
    assert ids <= set(skyrl_gym.registry)
    env = skyrl_gym.make("envhub/arithmetic", env_config={}, extras={"extra_info": {"seed": 0}})
    assert isinstance(env, BaseTextEnv) and isinstance(env, skyrl_gym.Env)
    prompt, info = env.init([])
    assert [m["role"] for m in prompt] == ["user"] and info["task_id"]


@pytest.mark.parametrize(
    ("name", "kwargs", "policy"),
    [("arithmetic", {"level": "easy"}, solve_arithmetic), ("guess-number", {"level": "easy"}, bisect)],
    ids=["single-turn", "multi-turn"],
)
def test_full_episodes_reward_as_in_process(name, kwargs, policy):
    env = envhub.make(name, **kwargs)
    rows = task_rows(env, split="test", n=4, env_kwargs=kwargs)
    for row, skyrl_row in zip(rows, skyrl.skyrl_rows(rows, env_class=f"envhub/{name}")):
        expected = play_inprocess(name, kwargs, row, policy)
        text_env, outputs = play_skyrl(f"envhub/{name}", kwargs, skyrl_row, policy)
        assert [(o["reward"], o["done"]) for o in outputs] == [(r, d) for r, d, _ in expected]
        final = outputs[-1]["metadata"]["rubric"]
        assert final == expected[-1][2]["rubric"] and final["total"] > 0
        metrics = text_env.get_metrics()
        assert metrics["turns"] == len(outputs) and metrics["rubric/total"] == final["total"]
        assert {k[len("rubric/"):] for k in metrics if k.startswith("rubric/")} == {*final["criteria"], "total"}
        with pytest.raises(EpisodeEndedError):
            text_env.step("one more")
        text_env.close()
    if name == "guess-number":
        assert len(outputs) > 2 and all(not o["done"] for o in outputs[:-1])
        assert outputs[1]["observations"][0]["content"].startswith("I could not read a guess")
        assert final["criteria"]["guess_format"]["score"] < 1


def test_aggregate_metrics_average_over_trajectories():
    metrics = []
    for seed in range(3):
        env = skyrl_gym.make("envhub/arithmetic", env_config={"env_kwargs": {"level": "easy"}}, extras={"extra_info": {"seed": seed}})
        history, _ = env.init([])
        env.step(solve_arithmetic(history) if seed else "no idea")
        metrics.append(env.get_metrics())
    aggregated = type(env).aggregate_metrics(metrics)
    assert aggregated["rubric/total"] == pytest.approx(sum(m["rubric/total"] for m in metrics) / 3)
    assert 0 < aggregated["rubric/total"] < 1


def test_register_another_runtime_under_its_own_id():
    env_class = skyrl.register("guess-number", id="envhub-test/guess-process", runtime="process", level="easy")
    assert env_class == "envhub-test/guess-process"
    env = envhub.make("guess-number", level="easy")
    rows = task_rows(env, split="train", n=1, env_kwargs={"level": "easy"})
    expected = play_inprocess("guess-number", {"level": "easy"}, rows[0], bisect)
    remote, outputs = play_skyrl(env_class, {}, skyrl.skyrl_rows(rows, env_class=env_class)[0], bisect)
    try:
        assert type(remote.env).__name__ == "RemoteEnv"
        assert [o["reward"] for o in outputs] == [r for r, _, _ in expected]
        assert outputs[-1]["metadata"]["rubric"]["total"] == expected[-1][2]["rubric"]["total"]
    finally:
        remote.close()
    assert skyrl.register("guess-number", id=env_class) == env_class  # registering again replaces it


def test_a_prompt_from_another_task_is_refused():
    env = envhub.make("arithmetic")
    a, b = task_rows(env, split="train", n=2)
    text_env = skyrl_gym.make("envhub/arithmetic", env_config={}, extras={"extra_info": {k: a[k] for k in ("task_id", "split", "seed")}})
    with pytest.raises(InvalidOptionError, match="not what task"):
        text_env.init(b["prompt"])
