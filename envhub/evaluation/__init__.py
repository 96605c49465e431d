"""Evaluation: run a model on environments and write results, a summary and a report.

    from envhub.evaluation import evaluate
    summary = evaluate("arithmetic", episodes=16, out_dir="runs/base")
    print(summary.reward["mean"], summary.pass_at_k)

Modules: :mod:`~envhub.evaluation.runner` (the loop, resume, when a run fails),
:mod:`~envhub.evaluation.preflight` (the checks before the first episode), :mod:`~envhub.evaluation.policies`
(endpoint, local model, local model + LoRA adapter), :mod:`~envhub.evaluation.results` (the output
folder and the summary), :mod:`~envhub.evaluation.stats` (intervals that stay in [0, 1]),
:mod:`~envhub.evaluation.report` (report.html, terminal tables, the comparison page),
:mod:`~envhub.evaluation.compare` (two runs side by side), :mod:`~envhub.http.chat` (retries,
backoff, rate limits). Importing this package is cheap: torch loads only with a local model.
"""

from __future__ import annotations

from envhub._lazy import lazy_getattr

__all__ = ["Comparison", "EvalConfig", "Summary", "compare_runs", "evaluate", "load_run", "run_eval"]

_LAZY = {
    "EvalConfig": "envhub.evaluation.runner",
    "evaluate": "envhub.evaluation.runner",
    "run_eval": "envhub.evaluation.runner",
    "Summary": "envhub.evaluation.results",
    "load_run": "envhub.evaluation.results",
    "Comparison": "envhub.evaluation.compare",
    "compare_runs": "envhub.evaluation.compare",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
