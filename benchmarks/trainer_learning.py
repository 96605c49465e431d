"""Does the reference trainer learn? arithmetic (easy), default model, CPU, dapo and cispo.

For each objective: train a LoRA adapter for a fixed wall-clock budget, then compare the mean
reward on the same held-out test episodes (greedy decoding) before and after training, with 95%
confidence intervals (normal approximation; the difference is paired, task by task).

    python benchmarks/trainer_learning.py                    # 18 min per objective, 200 episodes
    python benchmarks/trainer_learning.py --minutes 5 --eval-episodes 100 --algos cispo

Writes benchmarks/trainer_learning.md, benchmarks/trainer_learning.json and
benchmarks/trainer_learning.png (reward per step); runs go under runs/bench-learning-<algo>/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.grpo import DEMO_SETTINGS, evaluate, make_config, train  # noqa: E402
from trainers.models import load_policy  # noqa: E402

HERE = Path(__file__).resolve().parent
ENV = "arithmetic?level=easy"

# The training settings of this benchmark: the quickstart's (DEMO_SETTINGS), spelled out where
# they matter for the comparison, plus the run's own (everything else: TrainConfig defaults + preset).
SETTINGS = {**DEMO_SETTINGS, "lora_r": 16, "lora_alpha": 32, "micro_batch_size": 16, "threads": 2, "progress": False}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (normal approximation)."""
    n = len(values)
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / max(n - 1, 1)
    return m, 1.96 * math.sqrt(var / n)


def eval_rewards(model, tokenizer, episodes: int) -> tuple[list[float], int]:
    results = evaluate(model, tokenizer, ENV, episodes=episodes, split="test", temperature=0.0, max_new_tokens=64, batch_size=episodes)
    errors = sum(ep.error is not None for ep in results)
    return [ep.reward if ep.error is None else 0.0 for ep in results], errors  # an error scores 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=18.0, help="training budget per objective")
    parser.add_argument("--eval-episodes", type=int, default=200)
    parser.add_argument("--algos", default="dapo,cispo")
    parser.add_argument("--runs", default="runs")
    parser.add_argument(
        "--keep", action="store_true", help="reuse the baseline of trainer_learning.json and the results of objectives not in --algos"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (the evaluation tasks stay the same)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    algos = [a for a in args.algos.split(",") if a]
    report: dict = {
        "env": ENV,
        "model": "SmolLM2-135M-Instruct (embedded default)",
        "eval_episodes": args.eval_episodes,
        "minutes_per_algo": args.minutes,
        "settings": SETTINGS,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_at_start": os.getloadavg()[0],
        },
        "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "results": {},
    }

    previous = HERE / "trainer_learning.json"
    if args.keep and previous.is_file():  # same tasks (fixed seeds): the baseline stays valid
        old = json.loads(previous.read_text())
        report["before"], report["results"], report["started_at"] = old["before"], old["results"], old["started_at"]
        report["notes"] = old.get("notes", [])  # the author's; review them when a result changes
        report["results"] = {a: r for a, r in report["results"].items() if a not in algos}
    else:
        model, tokenizer = load_policy(device="cpu")
        t = time.perf_counter()
        before, before_errors = eval_rewards(model, tokenizer, args.eval_episodes)
        report["before"] = {"rewards": before, "errors": before_errors, "eval_s": time.perf_counter() - t}
        write(report)
        del model
    print(f"before: {mean_ci(report['before']['rewards'])}", flush=True)

    for algo in algos:
        out = Path(args.runs) / f"bench-learning-{algo}"
        shutil.rmtree(out, ignore_errors=True)
        config = make_config(
            algo,
            envs=[ENV],
            overrides={**SETTINGS, "seed": args.seed, "output_dir": str(out), "max_train_seconds": args.minutes * 60, "resume": False},
        )
        t = time.perf_counter()
        result = train(config)
        train_s = time.perf_counter() - t
        base, tokenizer = load_policy(device="cpu")
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(base, str(result.adapter_dir))
        tuned.eval()
        t = time.perf_counter()
        after, after_errors = eval_rewards(tuned, tokenizer, args.eval_episodes)
        report["results"][algo] = {
            "seed": args.seed,
            "train_s": train_s,
            "steps": len(result.metrics),
            "adapter": str(result.adapter_dir),
            "metrics": result.metrics,
            "after": {"rewards": after, "errors": after_errors, "eval_s": time.perf_counter() - t},
        }
        print(f"{algo}: after {mean_ci(after)} in {train_s:.0f}s, {len(result.metrics)} steps", flush=True)
        write(report)
        del tuned, base
    report["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write(report)
    return 0


def write(report: dict) -> None:
    (HERE / "trainer_learning.json").write_text(json.dumps(report, indent=1))
    plot(report)
    lines = [
        "# Trainer learning benchmark: arithmetic (easy), SmolLM2-135M-Instruct, CPU",
        "",
        "Produced by `python benchmarks/trainer_learning.py` "
        f"(started {report['started_at']}{', finished ' + report['finished_at'] if 'finished_at' in report else ', still running or interrupted'}).",
        "",
        f"Mean reward (rubric total: 0.8 correct + 0.2 format) on {report['eval_episodes']} held-out `test` "
        "episodes, greedy decoding, max 64 new tokens; the same tasks before and after. "
        "95% CIs by normal approximation; the gain's CI is paired by task.",
        "",
        "| objective | training | steps | before | after | gain (paired) |",
        "|---|---|---|---|---|---|",
    ]
    before = report["before"]["rewards"]
    b, bci = mean_ci(before)
    for algo, res in report["results"].items():
        after = res["after"]["rewards"]
        a, aci = mean_ci(after)
        d, dci = mean_ci([y - x for x, y in zip(before, after)])
        lines.append(
            f"| {algo} | {res['train_s'] / 60:.1f} min | {res['steps']} | {b:.3f} ± {bci:.3f} | {a:.3f} ± {aci:.3f} | "
            f"**{d:+.3f} ± {dci:.3f}** |"
        )
    if not report["results"]:
        lines.append(f"| (base model) | - | - | {b:.3f} ± {bci:.3f} | - | - |")
    lines += [
        "",
        "![reward per step](trainer_learning.png)",
        "",
        "Training settings (plus each objective's paper preset, see `trainers/grpo.py` ALGO_PRESETS):",
        "",
        "```json",
        json.dumps(report["settings"], indent=1),
        "```",
        "",
        f"Machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs, "
        f"{report['machine']['torch_threads']} torch threads"
        + (f"; 1-minute load average at the start {report['machine']['load_at_start']:.2f}" if "load_at_start" in report["machine"] else "")
        + ". Other work on the machine slows the steps and so fits fewer of them in the budget. "
        "Raw per-episode rewards and per-step metrics: `trainer_learning.json`.",
        "",
        *[f"- {note}" for note in report.get("notes", [])],
        "",
    ]
    (HERE / "trainer_learning.md").write_text("\n".join(lines))


def plot(report: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    if not report["results"]:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for algo, res in report["results"].items():
        steps = [m["step"] for m in res["metrics"]]
        reward = [m["reward/mean"] for m in res["metrics"]]
        ax.plot(steps, reward, alpha=0.35, marker="o")
        window = 5
        smooth = [sum(reward[max(0, i - window + 1) : i + 1]) / len(reward[max(0, i - window + 1) : i + 1]) for i in range(len(reward))]
        ax.plot(steps, smooth, label=f"{algo} (5-step mean)", color=ax.lines[-1].get_color())
    ax.axhline(mean_ci(report["before"]["rewards"])[0], color="grey", ls="--", label="base model, test (greedy)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean training reward (sampled)")
    ax.set_title("arithmetic easy, SmolLM2-135M + LoRA, CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "trainer_learning.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
