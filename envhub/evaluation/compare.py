"""``envhub eval compare RUN_A RUN_B``: what changed between two evaluation runs, with intervals.

When both runs scored the same tasks (same environment, split and seed: the same episode keys),
differences are paired per task, which gives much narrower intervals than comparing two independent
means; otherwise Welch's interval is used. Errored episodes are left out of both sides (the error
rate counts them).

Each metric has a direction (reward, pass rate and criteria: higher is better; error rate: lower is
better; turns: neither), and each row a verdict: ``better`` or ``worse`` when the interval excludes
zero, ``changed`` for a metric with no better direction, ``no clear change`` when the interval holds
zero, ``too few episodes`` when there is no interval, and ``no data`` when a side has nothing to
measure (every episode errored, or a criterion only one run has). No data is never "worse".
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envhub.evaluation.results import Summary, load_run
from envhub.evaluation.stats import Difference, paired_difference, welch_difference

__all__ = ["Comparison", "compare_runs", "in_words"]


@dataclass
class Comparison:
    """Per-metric differences, B minus A."""

    run_a: str
    run_b: str
    summary_a: Summary
    summary_b: Summary
    metrics: dict[str, Difference]
    same_tasks: bool
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN (no data) becomes null; each metric carries its direction and verdict."""
        return {
            "run_a": self.run_a,
            "run_b": self.run_b,
            "model_a": self.summary_a.model_label,
            "model_b": self.summary_b.model_label,
            "same_tasks": self.same_tasks,
            "warnings": self.warnings,
            "metrics": {
                k: {**_no_nan(d.to_dict()), "better": better_direction(k), "verdict": verdict(k, d)}
                for k, d in self.metrics.items()
            },
        }


#: Which way each metric should move; criteria (``criterion/NAME``) are scores, higher is better.
DIRECTIONS: dict[str, str | None] = {"reward": "higher", "pass_rate": "higher", "error_rate": "lower", "turns": None}


def better_direction(metric: str) -> str | None:
    """``"higher"``, ``"lower"``, or None when neither way is better (turns)."""
    if metric.startswith("criterion/"):
        return "higher"
    return DIRECTIONS.get(metric)


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def verdict(metric: str, d: Difference) -> str:
    """What a row of the comparison says (see the module docstring)."""
    if _nan(d.a) and _nan(d.b):
        return "no data"
    if _nan(d.a) or _nan(d.b):
        return "no data in " + ("A" if _nan(d.a) else "B")
    if _nan(d.ci_low) or _nan(d.ci_high):
        return "too few episodes"
    if not d.significant:
        return "no clear change"
    direction = better_direction(metric)
    if direction is None:
        return "changed"
    return "better" if (d.diff > 0) == (direction == "higher") else "worse"


def _no_nan(data: dict[str, Any]) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        if isinstance(v, list):
            return [clean(x) for x in v]
        return None if _nan(v) else v

    out = {k: clean(v) for k, v in data.items()}
    if out.get("diff") is None or None in (out.get("ci95") or [None]):
        out["significant"] = None  # no interval: neither significant nor not
    return out


def _per_task(records: list[dict[str, Any]], value) -> dict[int, float]:
    """Per task index, the mean of ``value(record)`` over its samples (records where it is not None)."""
    sums: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r.get("error"):
            continue
        v = value(r)
        if v is not None:
            sums[r["task_index"]].append(float(v))
    return {t: sum(v) / len(v) for t, v in sums.items()}


def _criterion(name: str):
    def get(r: dict[str, Any]) -> float | None:
        c = ((r.get("rubric") or {}).get("criteria") or {}).get(name)
        return None if c is None else c.get("score")

    return get


def _diff(a: dict[int, float], b: dict[int, float], paired: bool) -> Difference:
    if paired:
        common = sorted(set(a) & set(b))
        if len(common) >= 2:
            return paired_difference([a[t] for t in common], [b[t] for t in common])
    return welch_difference(list(a.values()), list(b.values()))


def compare_runs(run_a: str | Path, run_b: str | Path) -> Comparison:
    """Compare two evaluation output folders (B minus A)."""
    info_a, rec_a, sum_a = load_run(run_a)
    info_b, rec_b, sum_b = load_run(run_b)
    warnings = []
    if sum_a.env != sum_b.env:
        warnings.append(f"different environments: {sum_a.env} vs {sum_b.env}")
    if sum_a.rubric_hashes != sum_b.rubric_hashes:
        warnings.append("different rubric hashes: the scores are not on the same rubric")
    ca, cb = info_a.get("config", {}), info_b.get("config", {})
    same_tasks = (
        sum_a.env == sum_b.env
        and all(ca.get(k) == cb.get(k) for k in ("split", "seed", "env_kwargs"))
    )
    if same_tasks:  # check the task ids really match where both have them
        ids_a = {r["task_index"]: r.get("task_id") for r in rec_a if r.get("task_id")}
        ids_b = {r["task_index"]: r.get("task_id") for r in rec_b if r.get("task_id")}
        same_tasks = all(ids_a[t] == ids_b[t] for t in set(ids_a) & set(ids_b))
    if not same_tasks:
        warnings.append("the runs scored different tasks: unpaired (Welch) intervals")
    metrics: dict[str, Difference] = {}
    metrics["reward"] = _diff(_per_task(rec_a, lambda r: r.get("reward")), _per_task(rec_b, lambda r: r.get("reward")), same_tasks)
    ta, tb = sum_a.pass_threshold, sum_b.pass_threshold

    def passed(threshold):
        return lambda r: None if r.get("reward") is None else float(r["reward"] >= threshold - 1e-9)

    metrics["pass_rate"] = _diff(_per_task(rec_a, passed(ta)), _per_task(rec_b, passed(tb)), same_tasks)
    for name in sorted(set(sum_a.criteria) | set(sum_b.criteria)):
        metrics[f"criterion/{name}"] = _diff(_per_task(rec_a, _criterion(name)), _per_task(rec_b, _criterion(name)), same_tasks)
    metrics["turns"] = _diff(_per_task(rec_a, lambda r: r.get("turns")), _per_task(rec_b, lambda r: r.get("turns")), same_tasks)
    err_a = {i: float(bool(r.get("error"))) for i, r in enumerate(rec_a)}
    err_b = {i: float(bool(r.get("error"))) for i, r in enumerate(rec_b)}
    metrics["error_rate"] = welch_difference(list(err_a.values()), list(err_b.values()))
    return Comparison(str(run_a), str(run_b), sum_a, sum_b, metrics, same_tasks, warnings)


#: Column headings of the comparison, in the terminal and on the HTML page.
COLUMNS = ("metric", "better if", "A", "B", "B - A", "95% CI of B - A", "verdict")


def comparison_rows(comparison: Comparison) -> list[tuple[str, ...]]:
    """One row of :data:`COLUMNS` per metric, as text ("n/a" where there is no data)."""

    def num(value: float, sign: str = "") -> str:
        return "n/a" if _nan(value) else f"{value:{sign}.3f}"

    rows = []
    for name, d in comparison.metrics.items():
        ci = "n/a" if _nan(d.ci_low) or _nan(d.ci_high) else f"{d.ci_low:+.3f} to {d.ci_high:+.3f}"
        rows.append((name, better_direction(name) or "neither", num(d.a), num(d.b), num(d.diff, "+"), ci, verdict(name, d)))
    return rows


def in_words(comparison: Comparison) -> str:
    """Each criterion's change in one line a person reads, the heaviest criterion first: its mean
    score before and after, and the paired interval where that says it moved, e.g.
    ``correct up, 9% -> 21% (+12 points, 95% CI +3 to +21); answer_format up, 20% -> 100% (...)``."""
    weights = {name: c.get("weight", 0.0)
               for summary in (comparison.summary_b, comparison.summary_a) for name, c in summary.criteria.items()}  # fmt: skip
    names = sorted((m.split("/", 1)[1] for m in comparison.metrics if m.startswith("criterion/")),
                   key=lambda n: (-weights.get(n, 0.0), n))  # fmt: skip
    parts = []
    for name in names:
        d = comparison.metrics[f"criterion/{name}"]
        said = verdict(f"criterion/{name}", d)
        if _nan(d.a) or _nan(d.b):
            parts.append(f"{name}: {said}")
            continue
        change = f"{d.a:.0%} -> {d.b:.0%}"
        if said in ("better", "worse"):
            moved = "up" if said == "better" else "down"
            interval = f"{d.ci_low * 100:+.0f} to {d.ci_high * 100:+.0f}"
            parts.append(f"{name} {moved}, {change} ({d.diff * 100:+.0f} points, 95% CI {interval})")
        else:
            parts.append(f"{name} {change} ({said})")
    return "; ".join(parts)


_VERDICT_STYLE = {"better": "green", "worse": "red", "changed": "yellow"}


def comparison_table(comparison: Comparison):
    """A rich Table of a comparison."""
    from rich.table import Table

    title = (f"B - A   (A = {comparison.run_a}: {comparison.summary_a.model_label}; "
             f"B = {comparison.run_b}: {comparison.summary_b.model_label})")  # fmt: skip
    table = Table(title=title, title_justify="left")
    for col in COLUMNS:
        table.add_column(col)
    for row in comparison_rows(comparison):
        style = _VERDICT_STYLE.get(row[-1], "dim")
        table.add_row(*row[:-1], f"[{style}]{row[-1]}[/]")
    return table
