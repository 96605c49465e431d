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
MIX = ["basic_arithmetic", "chain_sum", "products", "gcd", "lcm", "count_bits", "letter_counting", "spell_backward"]
HELD_OUT = ["simple_equations", "base_conversion", "fraction_simplification", "number_filtering"]
# Easy settings (reasoning-gym's defaults are beyond the 135M model), each family's own difficulty
# fields, passed as --task-config. Measured greedy on 24 test problems each with the import's
# two-shot prompt, tag / correct: basic_arithmetic 24/10, products 24/20, gcd 24/8, lcm 24/12,
# count_bits (up to 16) 24/6; held out: simple_equations 24/0, base_conversion 24/3, fraction_simplification
# 24/2, number_filtering 24/1 (with a system-message prompt: no tag at all, so no reward to learn from).
# Test problems per family: small enough that a family's easy problems are not all held out (count_bits
# up to 16 has 16 problems, and a test split of 100 left its train split none).
TEST_SIZE = 40
EASY = {
    "basic_arithmetic": {"max_terms": 2, "max_digits": 1, "operators": ["+", "-"], "allow_parentheses": False, "allow_negation": False},
    "chain_sum": {"max_terms": 3, "max_digits": 1},
    "products": {"max_digits": 1},
    "gcd": {"max_value": 30},
    "lcm": {"max_value": 12},
    "count_bits": {"max_n": 63},
    "letter_counting": {"min_words": 3, "max_words": 5},
    "spell_backward": {"max_word_len": 4},
    "simple_equations": {"max_terms": 2, "max_value": 10, "operators": ["+", "-"], "operators_weights": [0.5, 0.5]},
    "base_conversion": {"max_value": 15, "max_base": 10},
    "fraction_simplification": {"max_value": 10, "max_factor": 5, "styles": ["plain"]},
    "number_filtering": {"min_numbers": 3, "max_numbers": 4, "max_decimals": 0, "min_value": 0, "max_value": 50},
}
CASES = {"single": SINGLE, "mix": MIX}


def import_env(name: str, families: list[str], where: Path) -> Path:
    """An environment folder over ``families``, written by ``envhub import reasoning-gym``."""
    folder = where / name
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "envhub", "import", "reasoning-gym", SOURCE, "--tasks", ",".join(families),
               "--name", f"bench/{name}", "--test-size", str(TEST_SIZE), "-o", str(folder)]  # fmt: skip
    for family in families:
        command += [arg for field, value in EASY[family].items() for arg in ("--task-config", f"{family}.{field}={json.dumps(value)}")]
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
    # three refill rounds, as the page was measured (DEMO_SETTINGS have had two since 2026-12-06)
    overrides = {**DEMO_SETTINGS, "threads": 1, "seed": args.seed, "output_dir": str(out), "overwrite": True,
                 "max_train_seconds": args.minutes * 60, "progress": False,
                 "max_sampling_rounds": 3}  # fmt: skip
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
    parser.add_argument("--eval-episodes", type=int, default=160, help="held-out test problems per model")
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
              "settings": settings(), "base": base, "runs": trained}  # fmt: skip
    for case, r in trained.items():
        if r["held_out"]["tasks"] != base["held_out"]["tasks"]:
            raise SystemExit(f"{case} was scored on other problems than the base model: the comparison would not be paired")
        r["gain"] = {k: paired(r["held_out"][k], base["held_out"][k]) for k in ("reward", "correct")}
    page = add_to_page(report)
    (HERE / "diversity.json").write_text(json.dumps(page, indent=1))
    write(page)
    print((HERE / "diversity.md").read_text())
    return 0


def settings() -> dict:
    """What makes two seeds' runs comparable: the families, their difficulty and the test split."""
    return {"single": SINGLE, "mix": MIX, "held_out": HELD_OUT, "easy": EASY, "test_size": TEST_SIZE, "source": SOURCE}


def add_to_page(report: dict) -> dict:
    """The page's reports: this seed's, beside earlier seeds' at the same settings (a rerun of a seed replaces it)."""
    path = HERE / "diversity.json"
    earlier = json.loads(path.read_text()).get("reports", []) if path.exists() else []
    same = ("minutes", "eval_episodes", "settings")
    kept = [r for r in earlier if all(r.get(k) == report[k] for k in same) and r["seed"] != report["seed"]]
    # the author's reading of the figures: kept while the settings stand, dropped with the runs they read
    notes = json.loads(path.read_text()).get("notes", []) if kept else []
    return {"reports": sorted([*kept, report], key=lambda r: r["seed"]), "notes": notes}


def write(page: dict) -> None:
    reports = page["reports"]
    first = reports[0]
    base = first["base"]["held_out"]  # the same for every seed: greedy, on the same problems
    n = len(base["reward"])
    when = "; ".join(f"seed {r['seed']} {r['started']}, load {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after"
                     for r in reports)  # fmt: skip
    lines = [
        "# One task family or a mix: held-out families after the same training time",
        "",
        f"Written by `python benchmarks/diversity.py` (each `--seed` adds its runs: {when}): CISPO with the main",
        f"job's settings (DEMO_SETTINGS), {first['minutes']:g} minutes of training per run, a seed's two runs at once",
        f"with one torch thread each on {first['cores']} cores. Environments from `envhub import reasoning-gym {SOURCE}` with",
        f"its two-shot prompt and --test-size {TEST_SIZE}, each family at the easy settings in `EASY` (benchmarks/diversity.py).",
        f"Held-out families, seen by neither run: {', '.join(HELD_OUT)}; {n} fixed test problems, greedy,",
        "the same for every model; gains are paired problem by problem (95% intervals, normal approximation).",
        "`correct` is reasoning-gym's own scorer (the task, 0.9 of the reward), `reward` adds the answer-tag format (0.1).",
        "",
        "| model | seed | trained on | steps | train reward first -> last | held-out correct | gain in correct | held-out reward | gain in reward |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| base | - | - | - | - | {_mean(base['correct']):.3f} | - | {_mean(base['reward']):.3f} | - |",
    ]
    for report in reports:
        for case, r in report["runs"].items():
            h, (gs, hs), (gr, hr) = r["held_out"], r["gain"]["correct"], r["gain"]["reward"]
            lines.append(
                f"| {case} | {report['seed']} | {', '.join(r['families'])} | {r['steps']} | {r['train_reward'][0]:.3f} -> "
                f"{r['train_reward'][1]:.3f} | {_mean(h['correct']):.3f} | {gs:+.3f} ± {hs:.3f} | {_mean(h['reward']):.3f} | {gr:+.3f} ± {hr:.3f} |"
            )
    columns = {"base": base, **{f"{case} s{r['seed']}": run["held_out"] for r in reports for case, run in r["runs"].items()}}
    by_family = {name: _by_family(h) for name, h in columns.items()}
    lines += ["", "Held-out correct by family (problems each):", "",
              "| family | " + " | ".join(by_family) + " |", "| --- |" + " --- |" * len(by_family)]  # fmt: skip
    for family in HELD_OUT:
        cells = [f"{_mean(by_family[name].get(family, [])):.3f}" for name in by_family]
        lines.append(f"| {family} ({len(by_family['base'].get(family, []))}) | " + " | ".join(cells) + " |")
    both = [r for r in reports if {"single", "mix"} <= set(r["runs"])]
    if both:  # the question itself: the two adapters, paired on the same problems (seeds averaged per problem)
        lines.append("")
        for r in both:
            lines.append(f"Mix minus single, held-out correct, paired, seed {r['seed']}: {_verdict(r['runs']['mix'], r['runs']['single'])}.")
        if len(both) > 1:
            mix = [_mean(v) for v in zip(*(r["runs"]["mix"]["held_out"]["correct"] for r in both))]
            single = [_mean(v) for v in zip(*(r["runs"]["single"]["held_out"]["correct"] for r in both))]
            lines.append(f"Over the {len(both)} seeds (each problem's scores averaged over the seeds): "
                         f"{_verdict({'held_out': {'correct': mix}}, {'held_out': {'correct': single}})}.")  # fmt: skip
    silent = [f"{case} s{report['seed']}" for report in reports for case, r in report["runs"].items()
              if r.get("train_reward_max", max(r["train_reward"])) == 0 and _mean(r["held_out"]["reward"]) == 0]  # fmt: skip
    if silent:  # a run that never earned reward learned nothing: say so rather than print zeros as a result
        lines += ["", f"No learning signal in {', '.join(silent)}: training reward was 0 at every step and every held-out reply",
                  "scored 0, so the group advantages were zero and this says nothing about diversity.",
                  "The question needs a policy that earns some reward at the start: a larger model, or longer replies."]
    if page.get("notes"):
        lines += ["", *page["notes"]]
    (HERE / "diversity.md").write_text("\n".join(lines) + "\n")


def _verdict(mix: dict, single: dict) -> str:
    diff, half = paired(mix["held_out"]["correct"], single["held_out"]["correct"])
    said = ("the mix generalised better" if diff - half > 0 else "the single family generalised better" if diff + half < 0
            else "no difference the interval can tell")  # fmt: skip
    return f"{diff:+.3f} ± {half:.3f} ({said})"


def _by_family(held_out: dict) -> dict[str, list[float]]:
    """Each held-out family's correct scores (task ids are ``FAMILY/INDEX``)."""
    out: dict[str, list[float]] = {}
    for task, value in zip(held_out["tasks"], held_out["correct"]):
        out.setdefault(task.rpartition("/")[0], []).append(value)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


if __name__ == "__main__":
    raise SystemExit(main())
