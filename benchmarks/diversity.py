"""Does a diverse mix of tasks generalise better than one task? (issue 19, "A pack built from them")

The default model trains twice with the main job's settings (``DEMO_SETTINGS``, CISPO) for the
same wall time, side by side with one torch thread each: once on one reasoning-gym task family,
once on a mix of several (the one included). Both adapters and the base model are then scored
greedily on the same test problems of task families neither run saw; the differences from the
base model are paired problem by problem, with 95% intervals. The result is reported whichever
way it falls.

    python benchmarks/diversity.py                  # 14 minutes of training a run
    python benchmarks/diversity.py --minutes 3 --eval-episodes 60

Environments come from ``envhub import reasoning-gym`` (reasoning-gym 0.1.25, the pinned version).
Writes benchmarks/diversity.md and benchmarks/diversity.json; runs go under runs/bench-diversity-*/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from child_run import run_child  # noqa: E402  (beside this script)

HERE = Path(__file__).resolve().parent
SOURCE = "reasoning-gym==0.1.25"
SINGLE = ["basic_arithmetic"]
MIX = ["basic_arithmetic", "chain_sum", "gcd", "lcm", "count_bits", "letter_counting", "word_sorting", "caesar_cipher"]
HELD_OUT = ["simple_equations", "base_conversion", "fraction_simplification"]
CASES = {"single": SINGLE, "mix": MIX}


def import_env(name: str, families: list[str], where: Path) -> Path:
    """An environment folder over ``families``, written by ``envhub import reasoning-gym``."""
    folder = where / name
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "envhub", "import", "reasoning-gym", SOURCE, "--tasks", ",".join(families),
               "--name", f"bench/{name}", "-o", str(folder)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"envhub import failed for {name}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return folder


def evaluate(adapter: str | None, env: str, episodes: int) -> dict:
    """Greedy scores on ``episodes`` fixed test problems of ``env`` (the same problems for every model)."""
    from envhub.models.loading import load_policy
    from trainers.rollout import heldout_rollouts

    model, tokenizer = load_policy(device="cpu")
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    t = time.perf_counter()
    results = heldout_rollouts(model, tokenizer, env, episodes=episodes, split="test", temperature=0.0, max_new_tokens=64, batch_size=episodes)
    return {
        "reward": [0.0 if ep.error else ep.reward for ep in results],  # an error scores 0
        "correct": [0.0 if ep.error else ep.criteria.get("correct", 0.0) for ep in results],
        "tasks": [ep.task_id for ep in results],
        "errors": sum(ep.error is not None for ep in results),
        "eval_s": time.perf_counter() - t,
    }


def train_one(case: str, args: argparse.Namespace) -> dict:
    import torch

    from trainers.config import DEMO_SETTINGS, make_config
    from trainers.grpo import train

    torch.set_num_threads(1)
    runs = Path(args.runs)
    out = runs / f"bench-diversity-{case}"
    overrides = {**DEMO_SETTINGS, "threads": 1, "seed": args.seed, "output_dir": str(out), "overwrite": True,
                 "max_train_seconds": args.minutes * 60, "progress": False}  # fmt: skip
    env = str(runs / "bench-diversity-envs" / f"rg-{case}")
    t = time.perf_counter()
    result = train(make_config("cispo", envs=[env], overrides=overrides))
    train_s = time.perf_counter() - t
    first, last = result.metrics[0], result.metrics[-1]
    return {
        "case": case, "families": CASES[case], "train_s": train_s, "steps": len(result.metrics),
        "train_reward": [first["reward/mean"], last["reward/mean"]],
        "train_reward_max": max(row["reward/mean"] for row in result.metrics), "adapter": str(result.adapter_dir),
        "held_out": evaluate(str(result.adapter_dir), str(runs / "bench-diversity-envs" / "rg-held-out"), args.eval_episodes),
    }  # fmt: skip


def paired(after: list[float], before: list[float]) -> tuple[float, float]:
    """Mean paired difference and its 95% half-width (normal approximation)."""
    d = [a - b for a, b in zip(after, before)]
    m = sum(d) / len(d)
    var = sum((x - m) ** 2 for x in d) / max(len(d) - 1, 1)
    return m, 1.96 * math.sqrt(var / len(d))


def child(job: str, args: argparse.Namespace) -> dict:
    """Run one job (a case's training, or the base model's evaluation) in a fresh process."""
    flags = ["--one", job, "--minutes", str(args.minutes), "--eval-episodes", str(args.eval_episodes), "--seed", str(args.seed),
             "--runs", args.runs]  # fmt: skip
    return run_child(__file__, Path(args.runs) / f"bench-diversity-{job}.result.json", flags, label=f"job {job}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=14.0, help="training budget per run")
    parser.add_argument("--eval-episodes", type=int, default=120, help="held-out test problems per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    if args.one:
        if args.one == "base":
            import torch

            torch.set_num_threads(2)
            result = {"held_out": evaluate(None, str(runs / "bench-diversity-envs" / "rg-held-out"), args.eval_episodes)}
        else:
            result = train_one(args.one, args)
        Path(args.result_file).write_text(json.dumps(result, indent=1))
        return 0
    envs = runs / "bench-diversity-envs"
    envs.mkdir(parents=True, exist_ok=True)
    for name, families in {"rg-single": SINGLE, "rg-mix": MIX, "rg-held-out": HELD_OUT}.items():
        import_env(name, families, envs)
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with ThreadPoolExecutor(len(CASES)) as pool:  # both at once, so they share the machine alike
        trained = dict(zip(CASES, pool.map(lambda case: child(case, args), CASES)))
    base = child("base", args)
    report = {"started": started, "minutes": args.minutes, "seed": args.seed, "eval_episodes": args.eval_episodes,
              "load_before": load_before, "load_after": os.getloadavg(), "cores": os.cpu_count(), "held_out": HELD_OUT,
              "base": base, "runs": trained}  # fmt: skip
    for case, r in trained.items():
        if r["held_out"]["tasks"] != base["held_out"]["tasks"]:
            raise SystemExit(f"{case} was scored on other problems than the base model: the comparison would not be paired")
        r["gain"] = {k: paired(r["held_out"][k], base["held_out"][k]) for k in ("reward", "correct")}
    (HERE / "diversity.json").write_text(json.dumps(report, indent=1))
    write(report)
    print((HERE / "diversity.md").read_text())
    return 0


def write(report: dict) -> None:
    base = report["base"]["held_out"]
    n = len(base["reward"])
    lines = [
        "# One task family or a mix: held-out families after the same training time",
        "",
        f"Written by `python benchmarks/diversity.py` ({report['started']}): CISPO with the main job's settings",
        f"(DEMO_SETTINGS), seed {report['seed']}, {report['minutes']:g} minutes of training per run, both runs at once",
        f"with one torch thread each on {report['cores']} cores (load {report['load_before'][0]:.1f} before,",
        f"{report['load_after'][0]:.1f} after). Environments from `envhub import reasoning-gym {SOURCE}`.",
        f"Held-out families, seen by neither run: {', '.join(HELD_OUT)}; {n} fixed test problems, greedy,",
        "the same for every model; gains are paired problem by problem (95% intervals, normal approximation).",
        "`correct` is reasoning-gym's own scorer (the task, 0.9 of the reward), `reward` adds the answer-tag format (0.1).",
        "",
        "| model | trained on | steps | train reward first -> last | held-out correct | gain in correct | held-out reward | gain in reward |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| base | - | - | - | {_mean(base['correct']):.3f} | - | {_mean(base['reward']):.3f} | - |",
    ]
    for case, r in report["runs"].items():
        h, (gs, hs), (gr, hr) = r["held_out"], r["gain"]["correct"], r["gain"]["reward"]
        lines.append(
            f"| {case} | {', '.join(r['families'])} | {r['steps']} | {r['train_reward'][0]:.3f} -> {r['train_reward'][1]:.3f} | "
            f"{_mean(h['correct']):.3f} | {gs:+.3f} ± {hs:.3f} | {_mean(h['reward']):.3f} | {gr:+.3f} ± {hr:.3f} |"
        )
    silent = [case for case, r in report["runs"].items()
              if r.get("train_reward_max", max(r["train_reward"])) == 0 and _mean(r["held_out"]["reward"]) == 0]
    if silent:  # a run that never earned reward learned nothing: say so rather than print zeros as a result
        seen = "at every step" if all("train_reward_max" in report["runs"][c] for c in silent) else "at its first and last step"
        lines += ["", f"No learning signal in {', '.join(silent)}: training reward was 0 {seen} and every held-out reply",
                  "scored 0 (no `<answer>` tag), so the group advantages were zero and this says nothing about diversity.",
                  "The question needs a policy that earns some reward at the start: a larger model, or longer replies."]
    (HERE / "diversity.md").write_text("\n".join(lines) + "\n")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


if __name__ == "__main__":
    raise SystemExit(main())
