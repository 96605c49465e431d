"""The echo environment through ``runtime="ray"`` beside ``runtime="process"``: steps/s and p50/p99.

A real Ray cluster on 127.0.0.1 (a head with no CPUs and ``--workers`` worker nodes of one CPU
each, as ``tests/runtime/test_ray_runtime.py`` starts it) serves the ray runtime; both runtimes
are driven by ``benchmarks/runtimes.py``'s async driver (``AsyncRemoteEnv`` clients, one server
holding every session), so the difference is Ray's placement of that server, not the step path.
Each measurement runs in a fresh interpreter, rows alternate between the runtimes, and each cell is
the median of ``--rounds`` rounds. Results go to ``benchmarks/fleet.md``.

    python benchmarks/fleet.py                    # 64 and 1000 sessions, 3 rounds: about 3 minutes
    python benchmarks/fleet.py --concurrency 64 --rounds 1 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "runtime"))

RUNTIMES = ("process", "ray")


def one(runtime: str, n: int, seconds: float) -> dict:
    from runtimes import run_envhub_remote

    if runtime == "ray":
        from ray_test_cluster import keep_ray_on_loopback

        keep_ray_on_loopback()
    result = run_envhub_remote(runtime, n, seconds)
    return {"steps": result.steps, "seconds": result.seconds, "setup_s": result.setup_s, "p50": result.pct(50), "p99": result.pct(99)}


def in_fresh_process(runtime: str, n: int, seconds: float, env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--one", runtime, str(n), "--seconds", str(seconds)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_report(rows: dict[tuple[str, int], list[dict]], args: argparse.Namespace, load: tuple[float, float], path: Path) -> None:
    lines = [
        "# The ray runtime beside the process runtime (echo environment)",
        "",
        f"`python benchmarks/fleet.py --concurrency {args.concurrency} --seconds {args.seconds:g} --rounds {args.rounds} --workers {args.workers}`;",
        f"a Ray cluster on 127.0.0.1 of a head and {args.workers} one-CPU worker node(s); {os.cpu_count()} cores shared by client,",
        f"server and Ray; load average {load[0]:.2f} before, {load[1]:.2f} after. Medians of {args.rounds} rounds, rows alternated.",
        "One server holds every session in both runtimes, so the step path is the same Unix-socket",
        "session protocol: the ray column's difference is where Ray placed that server and what its",
        "actor and node processes take from the same cores (on 2 cores this is overhead, not speed-up).",
        "",
        "| runtime | sessions | steps/s | p50 ms | p99 ms | setup s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (runtime, n), runs in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0])):
        rate = statistics.median(r["steps"] / r["seconds"] for r in runs)
        p50 = statistics.median(r["p50"] for r in runs)
        p99 = statistics.median(r["p99"] for r in runs)
        setup = statistics.median(r["setup_s"] for r in runs)
        lines.append(f"| {runtime} | {n} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {setup:.1f} |")
    lines += ["", "Every round, every cell (steps/s):", ""]
    for (runtime, n), runs in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0])):
        lines.append(f"- {runtime} at {n}: " + ", ".join(f"{r['steps'] / r['seconds']:,.0f}" for r in runs))
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="64,1000")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    p.add_argument("--one", nargs=2, metavar=("RUNTIME", "SESSIONS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.seconds)))
        return
    from ray_test_cluster import Cluster, keep_ray_on_loopback

    keep_ray_on_loopback()
    levels = [int(x) for x in args.concurrency.split(",")]
    load_before = os.getloadavg()[0]
    cluster = Cluster.start(workers=args.workers)
    try:
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        rows: dict[tuple[str, int], list[dict]] = {}
        for round_ in range(args.rounds):
            order = RUNTIMES if round_ % 2 == 0 else RUNTIMES[::-1]
            for n in levels:
                for runtime in order:
                    started = time.monotonic()
                    result = in_fresh_process(runtime, n, args.seconds, env)
                    rows.setdefault((runtime, n), []).append(result)
                    print(f"round {round_} {runtime} n={n}: {result['steps'] / result['seconds']:,.0f} steps/s, "
                          f"p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms ({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
    finally:
        cluster.stop()
        assert cluster.live_pids() == [], "Ray processes left behind"
    write_report(rows, args, (load_before, os.getloadavg()[0]), args.out)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
