"""The main job as a user runs it: `envhub quickstart` on the embedded defaults, once per seed.

Each seed is one `python -m envhub quickstart --seed S` in its own process (pull, evaluate the
default model on 200 held-out tasks, train CISPO for the default minutes, evaluate again), timed
from the command's start to its end. The figures come from the two evaluation folders it leaves:
the paired difference per criterion with its 95% interval (envhub.evaluation.compare_runs, the same
numbers the quickstart prints). Runs one after another: each has both cores.

    python benchmarks/main_job.py                   # seeds 0 1 2
    python benchmarks/main_job.py --seeds 0 --minutes 2

Writes benchmarks/main_job.md and benchmarks/main_job.json; runs go under runs/bench-main-job/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envhub.evaluation import compare_runs  # noqa: E402
from envhub.evaluation.compare import in_words  # noqa: E402
from machine import describe as describe_machine, in_words as machine_in_words  # noqa: E402  (beside this script)

HERE = Path(__file__).resolve().parent


def run_seed(seed: int, minutes: float | None, out: Path) -> dict:
    command = [sys.executable, "-m", "envhub", "quickstart", "--seed", str(seed), "--out", str(out)]
    if minutes is not None:
        command += ["--minutes", str(minutes)]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    (out.parent / f"seed{seed}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"quickstart --seed {seed} failed (exit {proc.returncode}); see {out.parent / f'seed{seed}.log'}")
    comparison = compare_runs(out / "eval-before", out / "eval-after")
    metrics = comparison.to_dict()["metrics"]
    steps = sum(1 for _ in (out / "train" / "metrics.jsonl").open())
    alerts = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("hack alert")]
    # the quickstart's own line per evaluation: "eval-before: mean reward ... (52 s); report: ..."
    eval_s = [int(m) for m in re.findall(r"^eval-(?:before|after): .* \((\d+) s\)", proc.stdout, re.MULTILINE)]
    return {"seed": seed, "wall_s": round(wall, 1), "steps": steps, "metrics": metrics, "eval_s": eval_s,
            "in_words": in_words(comparison), "alerts": alerts}  # fmt: skip


def write_report(report: dict) -> None:
    (HERE / "main_job.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "# The main job: `envhub quickstart` on the embedded defaults",
        "",
        f"Written by `python benchmarks/main_job.py` ({report['started']} to {report['finished']} UTC), one seed",
        f"after another on {machine_in_words(report.get('machine', {'cpus': '?'}))}; load {report['load_before']} before, {report['load_after']} after.",
        "Each row is one `python -m envhub quickstart --seed S` (arithmetic starter, SmolLM2-135M-Instruct, CISPO with",
        "DEMO_SETTINGS): 200 held-out test tasks (reset seeds S to S + 199), greedy, the same before and after;",
        "differences are paired task by task with 95% intervals. Wall time is the whole command (model already",
        "converted and cached).",
        "",
        "| seed | wall | evaluations before, after | steps | correct before -> after | gain (95% CI) | format before -> after | hack alerts |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in report["runs"]:
        c, f = run["metrics"]["criterion/correct"], run["metrics"]["criterion/answer_format"]
        lines.append(
            f"| {run['seed']} | {run['wall_s'] / 60:.1f} min | {', '.join(f'{s} s' for s in run.get('eval_s', [])) or '-'} | {run['steps']} | {c['a']:.3f} -> {c['b']:.3f} | "
            f"**{c['diff']:+.3f}** ({c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f}) | {f['a']:.3f} -> {f['b']:.3f} | "
            f"{len(run['alerts']) or 'none'} |"
        )
    above = sum(r["metrics"]["criterion/correct"]["ci95"][0] > 0 for r in report["runs"])
    lines += ["", f"Correctness rose with its interval above zero in {above} of {len(report['runs'])} runs.", ""]
    lines += ["What each run printed last:", ""] + [f"- seed {r['seed']}: {r['in_words']}" for r in report["runs"]]
    alerts = [f"- seed {r['seed']}: {a}" for r in report["runs"] for a in r["alerts"]]
    lines += ["", "Hack alerts:", ""] + alerts if alerts else []
    lines += ["", *[f"Note: {n}" for n in report.get("notes", [])]] if report.get("notes") else []
    (HERE / "main_job.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=None, help="training minutes (default: the quickstart's)")
    args = parser.parse_args()
    runs_dir = ROOT / "runs" / "bench-main-job"
    runs_dir.mkdir(parents=True, exist_ok=True)
    report = {"started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load_before": round(os.getloadavg()[0], 1),
              "machine": describe_machine(), "runs": []}  # fmt: skip
    for seed in args.seeds:
        report["runs"].append(run_seed(seed, args.minutes, runs_dir / f"seed{seed}"))
        print(f"seed {seed}: {report['runs'][-1]['in_words']}", flush=True)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    report["load_after"] = round(os.getloadavg()[0], 1)
    write_report(report)


if __name__ == "__main__":
    main()
