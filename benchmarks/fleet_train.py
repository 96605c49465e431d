"""One training step of a thousand concurrent episodes through ``--runtime ray``, beside ``process``.

Issue 18 asks that the trainer drive thousands of concurrent sessions through the ray runtime. A
step of P prompts x G samples opens P x G sessions at once (every episode of the step is in flight
while the batch is sampled), so ``--prompts-per-step 128 --group-size 8`` is 1,024 concurrent
sessions. Each runtime runs the same ``envhub train`` command in a fresh interpreter (rows alternated
round by round), the ray rows on a Ray cluster on 127.0.0.1 of a head and two worker nodes (the
tests' ``ray_test_cluster``). Answers are cut at 4 tokens: the question is whether the fleet holds
the step's sessions, not whether the model learns.

    python benchmarks/fleet_train.py                 # 128 x 8, one round
    python benchmarks/fleet_train.py --prompts 64 --group 8 --rounds 2

Writes benchmarks/fleet_train.md and benchmarks/fleet_train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "runtime"))

RUNTIMES = ("process", "ray")


def train_once(runtime: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """One step of ``envhub train`` on ``runtime``: exit code, wall time, the step's metrics, peak RSS."""
    out = Path(tempfile.mkdtemp(prefix=f"fleet-train-{runtime}-"))
    command = [sys.executable, "-m", "envhub", "train", "arithmetic", "--algo", "cispo", "--runtime", runtime,
               "--env-kwargs", "level=easy", "--output-dir", str(out), "--prompts-per-step", str(args.prompts),
               "--group-size", str(args.group), "--max-new-tokens", "4", "--lora-r", "2", "--lora-alpha", "4",
               "--no-dynamic-sampling", "--on-hack", "off", "--no-progress", "--steps", "1"]  # fmt: skip
    rss_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
    result = {"runtime": runtime, "rc": done.returncode, "wall_s": time.perf_counter() - started,
              "peak_rss_mb": max(rss_before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) // 1024}  # fmt: skip
    if done.returncode != 0:
        result["error"] = (done.stdout[-1500:] + done.stderr[-1500:]).strip()
        return result
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    keys = ("episodes/count", "episodes/errors", "perf/rollout_s", "perf/train_s", "perf/step_s")
    result.update({k: metrics[k] for k in keys})
    return result


def write_report(rows: list[dict], args: argparse.Namespace, loads: tuple[float, float], path: Path) -> None:
    sessions = args.prompts * args.group
    lines = [
        f"# One training step of {sessions:,} concurrent episodes: `--runtime ray` beside `process`", "",
        "Written by `python benchmarks/fleet_train.py "
        f"--prompts {args.prompts} --group {args.group} --rounds {args.rounds}` (see its docstring).", "",
        f"`envhub train arithmetic --runtime R --prompts-per-step {args.prompts} --group-size {args.group} "
        "--max-new-tokens 4 --steps 1` (CISPO, the default model, LoRA rank 2), each run in a fresh interpreter,",
        "rows alternated; the ray runs on a cluster on 127.0.0.1 of a head (no CPUs) and two one-CPU worker",
        f"nodes. 2 cores shared by the trainer, the servers and Ray; load average (1 min) {loads[0]:.2f} before, "
        f"{loads[1]:.2f} after. Medians over rounds.", "",
        "| runtime | sessions | episodes | errors | step s | rollout s | update s | command wall s | peak RSS MB | runs ok |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for runtime in RUNTIMES:
        runs = [r for r in rows if r["runtime"] == runtime]
        ok = [r for r in runs if r["rc"] == 0]
        if not ok:
            lines.append(f"| {runtime} | {sessions:,} | - | - | - | - | - | - | - | 0/{len(runs)} |")
            continue

        def med(key: str, ok: list[dict] = ok) -> float:
            return statistics.median(r[key] for r in ok)

        lines.append(f"| {runtime} | {sessions:,} | {med('episodes/count'):,.0f} | {max(r['episodes/errors'] for r in ok)} | "
                     f"{med('perf/step_s'):.0f} | {med('perf/rollout_s'):.0f} | {med('perf/train_s'):.0f} | "
                     f"{med('wall_s'):.0f} | {max(r['peak_rss_mb'] for r in ok):,} | {len(ok)}/{len(runs)} |")  # fmt: skip
    failed = [r for r in rows if r["rc"] != 0]
    lines += ["", "## Failures", ""] + ([f"- {r['runtime']}: exit {r['rc']}: `{r['error'][-400:]}`" for r in failed] or ["None."])
    lines += [
        "",
        "Read with care: the step's time is the model's (sampling 1,024 answers and the update on 2 cores), not the",
        "runtime's; what the rows show is that one step's sessions are all held at once on either runtime without",
        "an error. The servers hold 256 sessions each (`ENVHUB_SESSIONS_PER_SERVER=256`: four servers, which the two",
        "one-CPU nodes fit at arithmetic's `[limits] cpus = 0.5`; at the default 64 a session a server, the cluster",
        "has no room for the sixteen servers a step would need, and the make says so). Peak RSS is the largest",
        "child process's (the trainer).",
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args()

    from ray_test_cluster import Cluster, keep_ray_on_loopback

    keep_ray_on_loopback()
    load_before = os.getloadavg()[0]
    cluster = Cluster.start(workers=2)
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "ENVHUB_SESSIONS_PER_SERVER": "256", "COLUMNS": "200"}
    rows: list[dict] = []
    try:
        for round_no in range(args.rounds):
            order = RUNTIMES if round_no % 2 == 0 else RUNTIMES[::-1]
            for runtime in order:
                row = train_once(runtime, args, env)
                print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
                rows.append(row)
    finally:
        cluster.stop()
    loads = (load_before, os.getloadavg()[0])
    (HERE / "fleet_train.json").write_text(json.dumps({"args": vars(args), "load": loads, "rows": rows}, indent=1) + "\n")
    write_report(rows, args, loads, HERE / "fleet_train.md")
    print(f"wrote {HERE / 'fleet_train.md'}")


if __name__ == "__main__":
    main()
