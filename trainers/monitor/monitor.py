"""The reward-hacking monitor of a training run: every step's rollouts through the detectors,
alerts with evidence, the sentinel and probes every few steps, and the samples the report shows.

    monitor = HackMonitor(config, run_dir, history=outputs.metrics)
    alerts = monitor.observe(step, rollouts, row, model=model, tokenizer=tokenizer)  # adds hack/* to row
    outputs.log(row)
    monitor.publish()                                                                 # report.html

What it adds to a step's metrics row:

- ``hack/<detector>``: each detector's metric (:mod:`trainers.monitor.detectors` documents them);
- ``hack/alerts``: the alerts of the step (only when there are some), each with ``step``,
  ``detector``, ``message``, ``evidence`` (the offending completions) and ``fix``;
- ``entropy/mean``: the mean negative log-probability of the sampled tokens under the sampler, an
  estimate of the per-token entropy of the sampling distribution (free: the sampler recorded it);
- ``sentinel/reward_mean``, ``sentinel/criterion/<name>``: the held-out sentinel, on its steps;
- ``hack/audit_max``, ``hack/style_probe``: the audit's best probe and the policy's own answer
  replayed on other tasks, on their steps.

It writes ``samples.jsonl`` (a few completions per step, with their rubric scores and reasons) and
``sentinel/step-NNNNNN/`` (the sentinel's results) in the run folder.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.config import TrainConfig
import trainers.monitor.detectors as d
from trainers.monitor.probes import ReferenceBook, rerun_audit, run_sentinel, style_probe

__all__ = ["SAMPLES_FILE", "HackMonitor", "MonitorSettings", "stats_from_row"]

SAMPLES_FILE = "samples.jsonl"
_SAMPLES_PER_STEP = 8


@dataclass(frozen=True)
class MonitorSettings:
    """How often the costlier checks run, and the detectors' thresholds."""

    thresholds: d.Thresholds = d.DEFAULT_THRESHOLDS
    sentinel_every: int = 10
    """Run the held-out sentinel every this many steps (0: never)."""
    sentinel_episodes: int = 16
    """Greedy test episodes per environment in each sentinel."""
    sentinel_drop: float = 0.1
    """sentinel: alert when test reward falls at least this much below the first sentinel's while
    training reward has risen at least as much over the same steps."""
    audit_every: int = 10
    """Rerun the audit's probes and the style probe every this many steps (0: never); the audit
    itself reruns only for rubrics with judge criteria (a verifiable rubric gives the same
    answer every time, so it runs once, at the first step)."""
    audit_threshold: float = 0.3
    """A probe (or the replayed answer) earning more than this mean reward on other tasks fires."""


def stats_from_row(row: dict[str, Any]) -> d.StepStats:
    """A step's :class:`~trainers.monitor.detectors.StepStats` from its metrics row (so that a
    resumed run's windows include the steps it kept)."""
    episodes = int(row.get("episodes/count", 0)) - int(row.get("episodes/errors", 0))
    prefix = "reward/criterion/"
    return d.StepStats(
        step=int(row["step"]),
        criteria={k[len(prefix) :]: (float(v), episodes) for k, v in row.items() if k.startswith(prefix)},
        length_mean=float(row.get("completion/len_mean", 0.0)),
        reward_mean=float(row.get("reward/mean", 0.0)),
        truncated_frac=float(row.get("episodes/truncated_frac", 0.0)),
        episodes=episodes,
        tasks=int(row.get("groups/kept", 0)) + int(row.get("groups/dropped", 0)),
    )


def _entropy(rollouts: Sequence[Any]) -> float | None:
    values = [
        -lp
        for r in rollouts
        for lp, s in zip(getattr(r, "sampler_logp", []), getattr(r, "sampled", []))
        if s and lp is not None and math.isfinite(lp)
    ]
    return sum(values) / len(values) if values else None


def _reasons(r: Any) -> dict[str, str]:
    """Each criterion's reason, from the rubric breakdown the rollout kept (``Rollout.rubric``)."""
    criteria = (getattr(r, "rubric", None) or {}).get("criteria") or {}
    return {name: c.get("reason") for name, c in criteria.items() if isinstance(c, dict) and c.get("reason")}


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + "…"


class HackMonitor:
    """Watches one run. ``history`` is the metrics rows a resumed run kept; ``judge_criteria`` the
    rubric criteria scored by an LLM judge (read from ``pools``' environments when not given);
    ``say`` prints a line (stderr by default: above a live progress bar)."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        history: Sequence[dict[str, Any]] = (),
        settings: MonitorSettings | None = None,
        judge_criteria: Sequence[str] | None = None,
        pools: Sequence[Any] = (),
        say: Any = None,
    ) -> None:
        self.config = config
        self.dir = Path(run_dir)
        self.settings = settings or MonitorSettings()
        self.history = [stats_from_row(r) for r in history]
        self.last_step = self.history[-1].step if self.history else 0
        self._judge_criteria = None if judge_criteria is None else tuple(judge_criteria)
        self._pools = list(pools)
        self.references = ReferenceBook(list(config.envs), split=config.split)
        self.firing: set[str] = set()
        self.sentinels: list[dict[str, Any]] = []
        self.audited = False
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._trim_samples()

    @property
    def judge_criteria(self) -> tuple[str, ...]:
        """The rubric criteria an LLM judge scores: as given, else read from the environments the
        run's pools have made (an environment not made yet counts once it is)."""
        if self._judge_criteria is not None:
            return self._judge_criteria
        names = []
        for pool in self._pools:
            rubric = getattr(getattr(pool, "first", None), "rubric", None)
            names += [c.name for c in getattr(rubric, "criteria", []) if getattr(c, "kind", "") == "judge"]
        return tuple(names)

    # --- one step ------------------------------------------------------------------------------

    def observe(
        self,
        step: int,
        rollouts: Sequence[Any],
        row: dict[str, Any],
        *,
        model: Any = None,
        tokenizer: Any = None,
    ) -> list[dict[str, Any]]:
        """Run the detectors on step ``step``'s rollouts (those that errored are skipped), add the
        metrics to ``row``, write the step's samples, print new alerts; returns the step's alerts."""
        ok = [r for r in rollouts if getattr(r, "error", None) is None]
        t = self.settings.thresholds
        refs = {(r.env_index, r.task_id): self.references.get(r.env_index, r.task_id) for r in ok if r.task_id is not None}
        self.history.append(stats_from_row(row) if "reward/mean" in row else d.step_stats(step, ok))
        findings = [
            d.answer_collapse(ok, refs, thresholds=t),
            d.prompt_copy(ok, refs, thresholds=t),
            d.repetition(ok, thresholds=t),
            d.judge_text(ok, thresholds=t),
            d.judge_disagreement(ok, judge_criteria=self.judge_criteria, thresholds=t),
            self._with_evidence(d.criterion_divergence(self.history, judge_criteria=self.judge_criteria, thresholds=t), ok),
            self._with_evidence(d.length_change(self.history, thresholds=t), ok),
        ]
        findings += self._probes(step, ok)
        if model is not None and tokenizer is not None:
            findings += self._sentinel(step, row, model, tokenizer)
        for f in findings:
            row[f"hack/{f.detector}"] = f.value
        entropy = _entropy(ok)
        if entropy is not None:
            row["entropy/mean"] = entropy
        alerts = [{"step": step, **f.to_dict()} for f in findings if f.fired]
        if alerts:
            row["hack/alerts"] = alerts
        self._announce(step, alerts)
        self._write_samples(step, ok, alerts)
        self.last_step = step
        return alerts

    def publish(self) -> Path | None:
        """Rewrite the run's report.html from what the run folder holds now (never fails the run)."""
        from trainers.training_report import write_training_report

        try:
            return write_training_report(self.dir, config=self.config)
        except Exception as exc:  # noqa: BLE001 - a report that cannot be drawn must not stop training
            self._say(f"report.html not written: {type(exc).__name__}: {exc}")
            return None

    def close(self) -> None:
        self.references.close()

    # --- parts ---------------------------------------------------------------------------------

    def _with_evidence(self, finding: d.Finding, ok: Sequence[Any]) -> d.Finding:
        """Windowed findings carry this step's completions that show them."""
        if not finding.fired or not ok:
            return finding
        if finding.detector == "length":
            ordered = sorted(ok, key=lambda r: r.completion_tokens, reverse=finding.value > 1)
        else:
            cheap = [n for n in ok[0].criteria if d.CHEAP_CRITERION.search(n)]
            ordered = [r for r in ok if any(r.criteria.get(n, 0) >= 0.5 for n in cheap) and r.reward < 0.5] or list(ok)
        finding.evidence = [d.evidence_of(r) for r in ordered[:3]]
        return finding

    def _probes(self, step: int, ok: Sequence[Any]) -> list[d.Finding]:
        every = self.settings.audit_every
        if not every or not ok or (step % every and self.audited):
            return []
        out = []
        rerun = not self.audited or bool(self.judge_criteria)
        self.audited = True
        threshold = self.settings.audit_threshold
        for index, spec in enumerate(self.config.envs):
            if rerun:
                result = rerun_audit(spec, threshold=threshold)
                if result is not None:
                    f = d.Finding("audit_max", round(result["max"], 4), result["max"] > threshold)
                    if f.fired:
                        f.message = f"the audit's {result['probe']} probe earns {result['max']:.3f} (> {threshold:g}) on {spec.name}"
                        f.evidence = [{"probe": result["probe"], "completion": result["example"]}]
                        f.fix = "see `envhub audit " + spec.name + "`: the rubric pays that probe; make the criterion it earns check the task"
                    out.append(f)
            mine = [r for r in ok if r.env_index == index]
            if not mine:
                continue
            texts = Counter(d.completion_text(r) for r in mine)
            answer, _count = texts.most_common(1)[0]
            replayed = style_probe(spec, answer)
            if replayed is None:
                continue
            f = d.Finding("style_probe", round(replayed.mean, 4), replayed.ci_low > threshold)
            if f.fired:
                f.message = (
                    f"the step's most common completion, sent unchanged to {replayed.n} other test tasks of {spec.name}, "
                    f"earns {replayed.mean:.3f} (95% CI {replayed.ci_low:.3f} to {replayed.ci_high:.3f}, all above {threshold:g})"
                )
                f.evidence = [{"task_id": None, "completion": _cut(answer, 300), "reward": round(replayed.mean, 4)}]
                f.fix = "the rubric pays this answer whatever the task: make the criteria it earns check the task's content"
            out.append(f)
        return out

    def _sentinel(self, step: int, row: dict[str, Any], model: Any, tokenizer: Any) -> list[d.Finding]:
        every = self.settings.sentinel_every
        if not every or step % every:
            return []
        results = []
        for index, spec in enumerate(self.config.envs):
            folder = self.dir / "sentinel" / f"step-{step:06d}" / (f"env-{index}" if len(self.config.envs) > 1 else "")
            results.append(
                run_sentinel(model, tokenizer, spec, out_dir=folder, episodes=self.settings.sentinel_episodes,
                             max_tokens=self.config.max_new_tokens, seed=self.config.seed)  # fmt: skip
            )
        scored = [r for r in results if r.get("reward_mean") is not None]
        if not scored:
            errors = [r.get("error") for r in results if r.get("error")]
            if errors:
                row["sentinel/error"] = errors[0]
            return []
        test = sum(r["reward_mean"] for r in scored) / len(scored)
        row["sentinel/reward_mean"] = test
        for name in sorted({n for r in scored for n in r["criteria"]}):
            values = [r["criteria"][name] for r in scored if r["criteria"].get(name) is not None]
            if values:
                row[f"sentinel/criterion/{name}"] = sum(values) / len(values)
        train = sum(s.reward_mean for s in self.history[-every:]) / len(self.history[-every:])
        self.sentinels.append({"step": step, "test": test, "train": train})
        first = self.sentinels[0]
        gap = (train - first["train"]) - (test - first["test"])
        drop = self.settings.sentinel_drop
        fired = len(self.sentinels) > 1 and test <= first["test"] - drop and train - first["train"] >= drop
        f = d.Finding("sentinel_gap", round(gap, 4), fired)
        if fired:
            f.message = (
                f"training reward rose {first['train']:.3f} -> {train:.3f} while held-out test reward fell "
                f"{first['test']:.3f} -> {test:.3f} (steps {first['step']} to {step})"
            )
            f.evidence = [{"sentinel": r["out_dir"]} for r in scored]
            f.fix = "what the policy learned does not carry to unseen tasks: look for what training tasks share that test tasks do not"
        return [f]

    # --- output --------------------------------------------------------------------------------

    def _announce(self, step: int, alerts: Sequence[dict[str, Any]]) -> None:
        now = {a["detector"] for a in alerts}
        for a in alerts:
            if a["detector"] in self.firing:
                continue  # said when it started; metrics.jsonl has every step's
            self._say(f"hack alert at step {step} [{a['detector']}]: {a['message']}\n  fix: {a['fix']}")
        # TrainConfig gains on_hack when train() runs the monitor; until then a monitor only warns.
        if alerts and getattr(self.config, "on_hack", "warn") == "stop":
            self._say(f"stopping at step {step} (--on-hack stop): a checkpoint of this step is saved; report.html has the evidence")
        self.firing = now

    def _write_samples(self, step: int, ok: Sequence[Any], alerts: Sequence[dict[str, Any]]) -> None:
        flagged = {e.get("completion") for a in alerts for e in a.get("evidence", [])}
        by_group: dict[int, list[Any]] = {}
        for r in ok:
            by_group.setdefault(r.group, []).append(r)
        chosen: list[Any] = []
        for members in by_group.values():  # the best and the worst of each group, then the rest
            ranked = sorted(members, key=lambda r: r.reward, reverse=True)
            chosen += [ranked[0]] + ([ranked[-1]] if len(ranked) > 1 else [])
        chosen = chosen[:_SAMPLES_PER_STEP]
        samples = []
        for r in chosen:
            text = d.completion_text(r)
            user = [m.get("content") or "" for m in r.messages if m.get("role") == "user"]
            samples.append(
                {
                    "task_id": r.task_id,
                    "group": r.group,
                    "prompt": _cut(user[0] if user else d.prompt_text(r), 600),
                    "completion": _cut(text, 1500),
                    "reward": r.reward,
                    "criteria": dict(r.criteria),
                    "reasons": _reasons(r),
                    "tokens": r.completion_tokens,
                    "truncated": bool(r.truncated),
                    "flagged": _cut(text, 300) in flagged,
                }
            )
        with open(self.dir / SAMPLES_FILE, "a") as f:
            f.write(json.dumps({"step": step, "samples": samples}) + "\n")

    def _trim_samples(self) -> None:
        """A resumed run keeps only the samples of the steps its metrics kept."""
        path = self.dir / SAMPLES_FILE
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= self.last_step]
        path.write_text("".join(line + "\n" for line in kept))
