"""``envhub eval compare RUN_A RUN_B``: what changed between two evaluation runs, with intervals.

When both runs scored the same tasks (same environment, split and seed: the same episode keys),
differences are paired per task, which gives much narrower intervals than comparing two independent
means; otherwise Welch's interval is used. Errored episodes are left out of both sides.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envhub.evaluation.results import Summary, load_run
from envhub.evaluation.stats import Difference, paired_difference, welch_difference

__all__ = ["Comparison", "compare_runs"]


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
        return {
            "run_a": self.run_a,
            "run_b": self.run_b,
            "same_tasks": self.same_tasks,
            "warnings": self.warnings,
            "metrics": {k: d.to_dict() for k, d in self.metrics.items()},
        }


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


def comparison_table(comparison: Comparison):
    """A rich Table of a comparison."""
    from rich.table import Table

    table = Table(title=f"B - A   (A = {comparison.run_a}, B = {comparison.run_b})", title_justify="left")
    for col in ("metric", "A", "B", "B - A", "95% CI", ""):
        table.add_column(col)
    for name, d in comparison.metrics.items():
        mark = "[green]better[/]" if d.significant and d.diff > 0 else "[red]worse[/]" if d.significant else ""
        if name in ("error_rate", "turns") and d.significant:
            mark = "[dim]changed[/]"
        table.add_row(name, f"{d.a:.3f}", f"{d.b:.3f}", f"{d.diff:+.3f}", f"{d.ci_low:+.3f} to {d.ci_high:+.3f}", mark)
    return table
