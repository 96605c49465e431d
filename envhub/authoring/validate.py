"""Contract checks for an environment folder: what ``envhub validate`` runs.

Each check is a small function that raises (with a message naming what is wrong) or returns a
detail string. :func:`validate` runs them in order, stops at the first check the others depend on
(manifest, import), and returns a :class:`ValidationReport`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envhub.env.core import ChatEnv
from envhub.errors import EnvhubError
from envhub.runtime.loading import load_folder
from envhub.identity.manifest import load_manifest
from envhub.env.rubric import Rubric

#: Actions a scripted player sends when the environment has no reference answer.
PROBE_ACTIONS = ("I am not sure.", "<answer>0</answer>", "")
SEEDS = (0, 1, 2)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class ValidationReport:
    folder: str
    env: str = ""
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]


def play(env: ChatEnv, seed: int, actions: Callable[[ChatEnv, int], str], *, split: str | None = None) -> list[Any]:
    """Run one episode; return everything observable (for determinism and bound checks)."""
    options = {"split": split} if split else None
    obs, info = env.reset(seed=seed, options=options)
    trace: list[Any] = [obs, info["task_id"]]
    for turn in range(env.max_turns):
        obs, reward, terminated, truncated, info = env.step(actions(env, turn))
        trace.append((obs, reward, terminated, truncated, info.get("rubric")))
        if terminated or truncated:
            return trace
    raise AssertionError(f"the episode did not end after max_turns={env.max_turns} steps")


def scripted(env: ChatEnv, turn: int) -> str:
    """The reference answer where there is one, otherwise a fixed probe."""
    episode = env.episode
    reference = env.reference_action(episode) if episode is not None else None
    return reference if reference is not None else PROBE_ACTIONS[turn % len(PROBE_ACTIONS)]


def _check_contract(env: ChatEnv) -> str:
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # check_env warns about render modes without a spec
        check_env(env, skip_render_check=True)
    return "gymnasium check_env passes"


def _check_rubric(env: ChatEnv) -> str:
    rubric = getattr(env, "rubric", None)
    if not isinstance(rubric, Rubric):
        raise AssertionError("the environment has no `rubric` (set an envhub.Rubric on the class or in __init__)")
    return f"{len(rubric.criteria)} criteria, hash {rubric.hash[:19]}…"


def _check_determinism(env: ChatEnv) -> str:
    for seed in SEEDS:
        first, second = play(env, seed, scripted), play(env, seed, scripted)
        if repr(first) != repr(second):
            raise AssertionError(f"seed {seed}: the same seed and actions gave different episodes")
    return f"seeds {list(SEEDS)} replay identically"


def _check_scores(env: ChatEnv) -> str:
    totals = []
    for split in env.splits:
        for seed in SEEDS:
            for policy in (scripted, lambda e, t: PROBE_ACTIONS[t % len(PROBE_ACTIONS)]):
                trace = play(env, seed, policy, split=split)
                rubric = trace[-1][4]
                if rubric is None:
                    raise AssertionError(f"split {split}, seed {seed}: the last step has no info['rubric']")
                for name, result in rubric["criteria"].items():
                    score = result["score"]
                    if score is not None and not 0.0 <= score <= 1.0:
                        raise AssertionError(f"criterion `{name}` scored {score}, outside [0, 1]")
                total = rubric["total"]
                if not (isinstance(total, float) and math.isfinite(total) and 0.0 <= total <= 1.0):
                    raise AssertionError(f"rubric total {total!r} is outside [0, 1]")
                totals.append(total)
    return f"{len(totals)} episodes over splits {list(env.splits)} end within {env.max_turns} turns, scores in [0, 1]"


def _check_reference(env: ChatEnv) -> str:
    trace = play(env, 0, scripted)
    env.reset(seed=0)
    if env.reference_action(env.episode) is None:
        return "no reference answer (optional): audits cannot compare probes against a correct answer"
    total = trace[-1][4]["total"]
    if total < 0.5:
        raise AssertionError(f"the reference answer earns only {total:.2f}: the rubric may not reward what is wanted")
    return f"the reference answer earns {total:.2f}"


def validate(folder: str | Path) -> ValidationReport:
    """Run every contract check on the environment in ``folder``."""
    report = ValidationReport(folder=str(folder))
    try:
        manifest = load_manifest(folder)
        report.env = manifest.ref
        report.checks.append(Check("manifest", True, manifest.ref))
        env = load_folder(folder)
        report.checks.append(Check("entrypoint", True, manifest.entrypoint))
    except EnvhubError as exc:
        report.checks.append(Check("manifest" if not report.checks else "entrypoint", False, str(exc)))
        return report
    checks = [
        ("rubric", _check_rubric),
        ("check_env", _check_contract),
        ("determinism", _check_determinism),
        ("episodes and scores", _check_scores),
        ("reference answer", _check_reference),
    ]
    try:
        for name, check in checks:
            try:
                report.checks.append(Check(name, True, check(env)))
            except Exception as exc:  # a failing check is a finding, reported with its reason
                report.checks.append(Check(name, False, f"{type(exc).__name__}: {exc}"))
                if name == "rubric":
                    break
    finally:
        env.close()
    return report
