"""envhub environments as skyrl-gym ``BaseTextEnv`` s, registered so that ``skyrl_gym.make`` finds them.

SkyRL's generator makes one environment per trajectory, ``skyrl_gym.make(env_class,
env_config=..., extras=row)``, where ``row`` is the dataset row's extra columns; it calls
``init(prompt)`` with the row's prompt, then ``step(action)`` with each assistant message, and
appends the observations (the new messages only) to the conversation until ``done``.

Importing this module registers every bundled environment as ``envhub/<name>``
(``envhub/arithmetic``, ...), so a SkyRL worker needs only the import. Any other environment
(a folder, ``ns/name@^1.2``, another runtime) is registered with :func:`register`::

    import skyrl_gym
    from envhub.integrations import skyrl

    env = skyrl_gym.make("envhub/arithmetic", env_config={}, extras={"extra_info": {"seed": 0}})
    prompt, info = env.init([])            # an empty prompt: the environment's own first messages
    out = env.step("<answer>4</answer>")   # {"observations", "reward", "done", "metadata"}

Rows from :func:`envhub.integrations.datasets.task_rows` name their task: put
``{"task_id", "split", "seed"}`` in ``extras["extra_info"]`` (``skyrl_rows`` does), and ``init``
starts that task; without a task id the environment draws one with the seed. Rewards are the
environment's: its per-step rewards plus, at the end, the rubric's total; the final step's
metadata holds the rubric's breakdown (``metadata["rubric"]``) and ``get_metrics`` every
criterion's score, which SkyRL averages across trajectories.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from skyrl_gym.envs.base_text_env import BaseTextEnv, BaseTextEnvStepOutput
from skyrl_gym.envs.registration import register as _skyrl_register
from skyrl_gym.envs.registration import registry as _skyrl_registry

from envhub.errors import EnvironmentFailure, EpisodeEndedError, InvalidOptionError

__all__ = ["EnvhubTextEnv", "register", "register_bundled", "skyrl_rows"]


class EnvhubTextEnv(BaseTextEnv):
    """One envhub environment, one trajectory at a time, in skyrl-gym's ``BaseTextEnv`` API.

    ``env_id``, ``runtime`` and ``make_kwargs`` are what ``envhub.make`` takes (set by
    :func:`register`); ``env_config`` is SkyRL's per-environment config, whose ``env_kwargs``
    (a mapping) are added to the factory's arguments; ``extras`` is the dataset row.
    """

    def __init__(
        self,
        env_config: Mapping[str, Any] | None = None,
        extras: Mapping[str, Any] | None = None,
        *,
        env_id: str | os.PathLike[str],
        runtime: str = "inprocess",
        make_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from envhub.runtime.make import make

        config_kwargs = dict((env_config or {}).get("env_kwargs") or {})
        self.env = make(env_id, runtime=runtime, **{**dict(make_kwargs or {}), **config_kwargs})
        self.max_turns = self.env.max_turns
        self.extras = dict(extras or {})
        self.messages: list[dict[str, Any]] = []
        self.rubric: dict[str, Any] | None = None
        self.done = False

    def init(self, prompt: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Start the row's task; returns the environment's first messages and the reset info.

        A non-empty ``prompt`` must be those messages (a row built from this environment).
        """
        task = dict(self.extras.get("extra_info") or {})
        options = {"split": task.get("split", "train")}
        if task.get("task_id") is not None:
            options["task_id"] = task["task_id"]
        obs, info = self.env.reset(seed=task.get("seed"), options=options)
        self.messages = [dict(m) for m in obs]
        self.turns, self.rubric, self.done = 0, None, False
        if prompt and [(m.get("role"), m.get("content")) for m in prompt] != [(m["role"], m["content"]) for m in obs]:
            raise InvalidOptionError(
                self.env.identity.ref, "prompt",
                f"the row's prompt is not what task {info['task_id']} starts with: build the rows again with skyrl_rows()",
            )
        return list(self.messages), dict(info)

    def step(self, action: str) -> BaseTextEnvStepOutput:
        """Send the assistant's message; the observations are the environment's messages after it."""
        if self.done:
            raise EpisodeEndedError(self.env.identity.ref)
        before = len(self.messages) + 1  # the conversation so far and the action
        obs, reward, terminated, truncated, info = self.env.step(action)
        if any(dict(m) != old for m, old in zip(obs, self.messages)):
            raise EnvironmentFailure(
                self.env.identity.ref, "step", "rewrote earlier messages, which a skyrl-gym observation cannot express"
            )
        self.messages = [dict(m) for m in obs]
        self.turns += 1
        self.done = bool(terminated or truncated)
        if self.done:
            self.rubric = info.get("rubric")
        metadata = {**info, "terminated": bool(terminated), "truncated": bool(truncated)}
        return BaseTextEnvStepOutput(
            observations=self.messages[before:], reward=float(reward), done=self.done, metadata=metadata,
            postprocessed_action=None,
        )

    def get_metrics(self) -> dict[str, Any]:
        """The finished trajectory's turns and every criterion's score (``rubric/<name>``)."""
        metrics: dict[str, Any] = {"turns": self.turns}
        for name, c in ((self.rubric or {}).get("criteria") or {}).items():
            if c.get("score") is not None:
                metrics[f"rubric/{name}"] = c["score"]
        if self.rubric is not None:
            metrics["rubric/total"] = self.rubric["total"]
        return metrics

    def close(self) -> None:
        self.env.close()


def _creator(env_id: str | os.PathLike[str], runtime: str, make_kwargs: Mapping[str, Any]):
    def create(env_config: Mapping[str, Any] | None = None, extras: Mapping[str, Any] | None = None) -> EnvhubTextEnv:
        return EnvhubTextEnv(env_config, extras, env_id=env_id, runtime=runtime, make_kwargs=make_kwargs)

    return create


def register(env_id: str | os.PathLike[str], *, id: str | None = None, runtime: str = "inprocess", **make_kwargs: Any) -> str:
    """Register ``env_id`` with skyrl-gym under ``id`` (default ``namespace/name`` of its manifest);
    returns the id. Registering an id again replaces it (skyrl-gym refuses duplicates)."""
    from envhub.runtime.locate import locate

    if id is None:
        manifest = locate(env_id).manifest
        id = f"{manifest.namespace}/{manifest.name}"
    _skyrl_registry.pop(id, None)
    _skyrl_register(id=id, entry_point=_creator(env_id, runtime, make_kwargs))
    return id


def register_bundled() -> list[str]:
    """Register every bundled environment as ``envhub/<name>``; returns the ids."""
    from envhub.registry import bundled_registry

    bundled = bundled_registry()
    if bundled is None:
        return []
    return [register(name) for name in sorted(bundled.index().environments)]


def skyrl_rows(rows: Sequence[Mapping[str, Any]], *, env_class: str) -> list[dict[str, Any]]:
    """Task rows (:func:`envhub.integrations.datasets.task_rows`) as SkyRL dataset rows:
    ``prompt``, ``env_class``, and the task in ``extra_info``, the extras ``init`` reads."""
    return [
        {
            "data_source": row["env"],
            "prompt": row["prompt"],
            "env_class": env_class,
            "extra_info": {"task_id": row["task_id"], "split": row["split"], "seed": row["seed"]},
        }
        for row in rows
    ]


register_bundled()
