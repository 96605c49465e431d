"""The monitor's checks that play episodes: the held-out sentinel, the audit's probes, the policy's
own answer replayed on other tasks, and the tasks' reference answers.

- :func:`run_sentinel`: a small greedy evaluation of the policy being trained on test tasks,
  through :func:`envhub.evaluation.runner.run_eval` (the same tasks every time: paired), so that
  training reward can be set beside test reward;
- :func:`rerun_audit`: ``envhub audit``'s probes against the rubric (only in-process, where it
  costs milliseconds);
- :func:`style_probe`: the step's most common completion sent, unchanged, as the answer to other
  test tasks: what the rubric pays for the policy's current answer regardless of the task;
- :class:`ReferenceBook`: reference answers (``ChatEnv.reference_action``) of the tasks a step drew.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from envhub.authoring.audit import audit
from envhub.errors import EnvhubError
from envhub.evaluation.local_model import LocalModel, Sampling
from envhub.evaluation.policies import LocalPolicy
from envhub.evaluation.runner import EvalConfig, run_eval
from envhub.evaluation.stats import Estimate, estimate
from trainers.config import EnvSpec

__all__ = ["ReferenceBook", "TrainingModel", "rerun_audit", "run_sentinel", "style_probe"]


class TrainingModel(LocalModel):
    """The policy being trained, as evaluation's :class:`LocalModel`: nothing is loaded, the live
    (peft) model generates, so the sentinel sees the adapter as it is at this step."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, max_batch: int = 64) -> None:  # noqa: D107
        import torch

        self.name = name
        self.path = name
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.adapters: dict[str, str] = {}  # none named: the model's active adapter is the policy
        self._lock = threading.Lock()
        self._torch = torch


def _test_split(env: Any) -> str | None:
    splits = tuple(getattr(env, "splits", ("train", "test")))
    return "test" if "test" in splits else None


def run_sentinel(
    model: Any,
    tokenizer: Any,
    spec: EnvSpec,
    *,
    out_dir: str | Path,
    episodes: int,
    max_tokens: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Greedy episodes of ``spec``'s test split played by ``model``; returns the summary's numbers
    (``reward_mean``, ``criteria`` {name: mean}, ``episodes``, ``errors``, ``out_dir``) or
    ``{"error": ...}`` when the evaluation could not run. Results land in ``out_dir``."""
    config = EvalConfig(
        env=spec.name,
        out_dir=str(out_dir),
        episodes=episodes,
        split="test",
        seed=seed,
        concurrency=episodes,
        temperature=0.0,
        max_tokens=max_tokens,
        runtime=spec.runtime,
        env_kwargs=dict(spec.kwargs),
        report=False,
        overwrite=True,
    )
    policy = LocalPolicy(sampling=Sampling(0.0, 1.0, max_tokens), local_model=TrainingModel(model, tokenizer, name="training-policy"))
    try:
        summary = run_eval(config, policy=policy, log=lambda _line: None)
    except EnvhubError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300], "out_dir": str(out_dir)}
    return {
        "reward_mean": summary.reward.get("mean"),
        "criteria": {name: c.get("mean") for name, c in summary.criteria.items()},
        "episodes": summary.episodes,
        "errors": summary.errors,
        "out_dir": str(out_dir),
    }


def rerun_audit(spec: EnvSpec, *, tasks: int = 4, threshold: float = 0.3) -> dict[str, Any] | None:
    """``envhub audit`` on ``spec`` (its in-process runtime only; None elsewhere, or when it fails):
    ``{"max": best probe's mean, "probe": its name, "failures": [...], "example": its message}``."""
    if spec.runtime != "inprocess":
        return None
    try:
        report = audit(spec.name, tasks=tasks, threshold=threshold, env_kwargs=dict(spec.kwargs))
    except EnvhubError:
        return None
    if not report.probes:
        return None
    best = max(report.probes, key=lambda p: p.mean)
    return {"max": best.mean, "probe": best.probe, "failures": report.failures, "example": best.example[:300]}


#: Tasks the style probe replays an answer on: enough that a few tasks sharing the answer by chance
#: (small integers on arithmetic's starter level) do not decide it, see :func:`style_probe`.
STYLE_PROBE_TASKS = 16


def style_probe(spec: EnvSpec, answer: str, *, tasks: int = STYLE_PROBE_TASKS, seed: int = 0) -> Estimate | None:
    """The reward of ``answer`` sent as every reply on ``tasks`` test tasks of ``spec``, as a mean
    with its 95% interval (in-process only; None elsewhere or when the environment refuses it).

    The caller fires on the interval's lower end, not the mean: an answer right by coincidence on
    one task in four (plus the format weight) averaged 0.4 on four starter tasks, over the 0.3
    threshold, while an answer the rubric pays whatever the task scores alike everywhere."""
    if spec.runtime != "inprocess":
        return None
    from envhub.runtime.make import make

    env = make(spec.name, runtime="inprocess", **spec.kwargs)
    try:
        split = _test_split(env)
        if split is None:
            return None
        rewards = []
        for k in range(tasks):
            env.reset(seed=seed + k, options={"split": split})
            total, done, turns = 0.0, False, 0
            while not done and turns < 32:
                _, reward, terminated, truncated, _ = env.step(answer)
                total += float(reward)
                done, turns = terminated or truncated, turns + 1
            rewards.append(total)
        return estimate(rewards)
    except EnvhubError:
        return None
    finally:
        env.close()


class ReferenceBook:
    """Reference answers of tasks, by ``(env_index, task_id)``, from in-process instances of the
    run's environments (replaying a task by id); None where an environment has none or cannot be
    replayed here (another runtime)."""

    def __init__(self, specs: list[EnvSpec], *, split: str) -> None:
        self.specs = specs
        self.split = split
        self._envs: dict[int, Any] = {}
        self._cache: dict[tuple[int, str], str | None] = {}

    def _env(self, index: int) -> Any:
        if index not in self._envs:
            spec = self.specs[index]
            env = None
            if spec.runtime == "inprocess":
                from envhub.runtime.make import make

                try:
                    env = make(spec.name, runtime="inprocess", **spec.kwargs)
                except EnvhubError:
                    env = None
            self._envs[index] = env
        return self._envs[index]

    def get(self, env_index: int, task_id: str | None) -> str | None:
        if task_id is None:
            return None
        key = (env_index, task_id)
        if key not in self._cache:
            env = self._env(env_index)
            answer = None
            if env is not None:
                try:
                    env.reset(options={"task_id": task_id, "split": self.split})
                    answer = env.reference_action(env.episode)
                except Exception:  # noqa: BLE001 - a task that cannot be replayed has no reference here
                    answer = None
            self._cache[key] = answer
        return self._cache[key]

    def close(self) -> None:
        for env in self._envs.values():
            if env is not None:
                try:
                    env.close()
                except Exception:  # noqa: BLE001
                    pass
        self._envs.clear()
