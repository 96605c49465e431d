"""envhub's trainer against TRL's GRPOTrainer, side by side in one run, on CPU.

Same model (the embedded SmolLM2-135M-Instruct), same LoRA (r 16, alpha 32, all linear layers),
same prompts (the arithmetic-easy train tasks the envhub trainer draws, in its order), same group
size, completion length, sampling (temperature 1, top-p 1), loss (dapo: clip-higher 0.2/0.28,
token-level normalisation, truncated completions masked, no KL), one optimizer step per
generation batch, same learning rate. Rewards come from the arithmetic environment for both.
Dynamic sampling and overlong shaping are off in envhub's trainer (TRL has neither), so both do
the same work per step.

    python benchmarks/trainer_vs_trl.py [--steps 4] [--prompts 2] [--group 8] [--max-new-tokens 32] \
        [--order envhub,envhub-bf16,envhub-vllm,envhub-vllm-adapter,trl,trl-bf16] [--rounds 2]

``envhub`` is the trainer with its transformers backend, ``envhub-vllm`` with its vLLM backend (a
vLLM server in its own environment, ``make vllm``; its start-up is outside the step times, its
weight sync inside them) pushing merged weights after each update, ``envhub-vllm-adapter`` the same
hot-loading the LoRA adapter instead; ``envhub-bf16`` the transformers backend with
``mixed_precision: bf16`` (bfloat16 matmuls under torch.autocast, float32 weights), set against
``trl-bf16``, TRL with ``bf16=True`` (accelerate's autocast), so that each comparison is at the same
precision. The rows run in the order given, ``--rounds`` times over, so that a
noisy machine weighs on each alike; the tables give medians over every round's steps.

Writes benchmarks/trainer_vs_trl.md and benchmarks/trainer_vs_trl.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe as describe_machine, in_words as machine_in_words  # noqa: E402  (beside this script)
from trainers.config import make_config  # noqa: E402
from trainers.grpo import plan_groups, train  # noqa: E402
from envhub.models.loading import default_model_path  # noqa: E402

HERE = Path(__file__).resolve().parent


#: The envhub rows: (backend, weight_sync, mixed_precision) of each.
ENVHUB_ROWS = {
    "envhub": ("transformers", "auto", "no"),
    "envhub-bf16": ("transformers", "auto", "bf16"),  # bfloat16 matmuls, float32 weights (autocast)
    "envhub-vllm": ("vllm", "merged", "no"),  # the merged weights pushed to vLLM after each update
    "envhub-vllm-adapter": ("vllm", "adapter", "no"),  # the LoRA adapter hot-loaded into vLLM instead
}
#: The TRL rows: GRPOConfig's bf16 of each (mixed precision through accelerate's autocast).
TRL_ROWS = {"trl": False, "trl-bf16": True}


def envhub_run(args, workdir: Path, backend: str = "transformers", weight_sync: str = "auto", mixed_precision: str = "no") -> dict:
    config = make_config(
        "dapo",
        envs=["arithmetic?level=easy"],
        overrides={
            "prompts_per_step": args.prompts,
            "group_size": args.group,
            "max_new_tokens": args.max_new_tokens,
            "steps": args.steps,
            "temperature": 1.0,
            "top_p": 1.0,
            "learning_rate": args.lr,
            "dynamic_sampling": False,
            "overlong_shaping": False,
            "mask_truncated": True,
            # TRL's transformers generation stops only at end-of-turn tokens, not at arithmetic's
            # `</answer>`: the same work for both means no stop strings here either
            "env_stops": False,
            "minibatches": 1,
            "micro_batch_size": args.prompts * args.group,
            "lora_r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.0,
            "output_dir": str(workdir / f"envhub-{backend}"),
            "backend": backend,
            "weight_sync": weight_sync,
            "mixed_precision": mixed_precision,
            "checkpoint_every": 10_000,
            "progress": False,
            "overwrite": True,
            "threads": 2,
        },
    )
    t = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - t
    steps = [m["perf/step_s"] for m in result.metrics]
    return {
        "step_s": steps,
        "rollout_s": [m["perf/rollout_s"] for m in result.metrics],
        "sync_s": [m["perf/sync_s"] for m in result.metrics],
        "tokens_per_s": [m["perf/tokens_per_s"] for m in result.metrics],
        "reward": [m["reward/mean"] for m in result.metrics],
        "completions_per_step": args.prompts * args.group,
        "wall_s": wall,
        "load": os.getloadavg(),
    }


def trl_prompts(args) -> list[dict]:
    """The envhub trainer's tasks, step by step, as a TRL dataset (prompt messages + task id)."""
    import envhub

    config = make_config("dapo", envs=["arithmetic?level=easy"], overrides={"group_size": args.group})
    env = envhub.make("arithmetic", level="easy")
    rows = []
    for step in range(args.steps):
        for _g, _e, seed in plan_groups(config, step, 0, args.prompts, 0)[:: args.group]:
            obs, info = env.reset(seed=seed, options={"split": "train"})
            rows.append({"prompt": obs, "task_id": info["task_id"]})
    env.close()
    return rows


def trl_run(args, workdir: Path, bf16: bool = False) -> dict:
    import envhub
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    env = envhub.make("arithmetic", level="easy")

    def arithmetic_reward(prompts, completions, task_id, **_):
        rewards = []
        for completion, tid in zip(completions, task_id):
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            env.reset(options={"task_id": tid, "split": "train"})
            rewards.append(float(env.step(text)[1]))
        return rewards

    class Timer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)

    timer = Timer()
    config = GRPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta2=0.99,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=0.0,
        loss_type="dapo",
        epsilon=0.2,
        epsilon_high=0.28,
        mask_truncated_completions=True,
        scale_rewards="group",
        num_iterations=1,
        max_steps=args.steps,
        shuffle_dataset=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=bf16,
        seed=0,
        disable_dropout=True,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(
        model=str(default_model_path()),
        reward_funcs=arithmetic_reward,
        args=config,
        train_dataset=Dataset.from_list(trl_prompts(args)),
        peft_config=lora,
        callbacks=[timer],
    )
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t
    rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    env.close()
    return {
        "step_s": timer.times,
        "reward": rewards,
        "completions_per_step": args.prompts * args.group,
        "wall_s": wall,
        "load": os.getloadavg(),
    }


def summary(runs: list[dict]) -> dict:
    """Medians over the rounds' steps, leaving out each run's first (warm-up) step."""
    steady = [x for run in runs for x in (run["step_s"][1:] or run["step_s"])]
    rollout = [x for run in runs for x in (run.get("rollout_s", [])[1:] or run.get("rollout_s", []))]
    tokens = [x for run in runs for x in (run.get("tokens_per_s", [])[1:] or run.get("tokens_per_s", []))]
    sync = [x for run in runs for x in (run.get("sync_s", [])[1:] or run.get("sync_s", []))]
    s = statistics.median(steady)
    rewards = [x for run in runs for x in run["reward"]]
    return {
        "s_per_step": s,
        "rollout_s": statistics.median(rollout) if rollout else None,
        "tokens_per_s": statistics.median(tokens) if tokens else None,
        "sync_s": statistics.median(sync) if sync else None,
        "completions_per_s": runs[0]["completions_per_step"] / s,
        "mean_reward": sum(rewards) / max(len(rewards), 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--order", default="envhub,envhub-bf16,envhub-vllm,envhub-vllm-adapter,trl,trl-bf16")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    workdir = Path(tempfile.mkdtemp(prefix="bench-vs-trl-"))
    import trl

    report = {
        "settings": vars(args),
        "machine": {**describe_machine(), "torch_threads": 2},
        "versions": {"torch": torch.__version__, "trl": trl.__version__},
        "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": {},
    }
    try:
        for round_ in range(args.rounds):
            for name in args.order.split(","):
                if name in TRL_ROWS:
                    run = trl_run(args, workdir, bf16=TRL_ROWS[name])
                else:
                    backend, weight_sync, precision = ENVHUB_ROWS[name]
                    run = envhub_run(args, workdir, backend=backend, weight_sync=weight_sync, mixed_precision=precision)
                run["round"] = round_ + 1
                report["runs"].setdefault(name, []).append(run)
                report["summary"] = {n: summary(r) for n, r in report["runs"].items()}
                print(name, round_ + 1, report["summary"][name], flush=True)
                write(report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write(report)
    return 0


def write(report: dict) -> None:
    (HERE / "trainer_vs_trl.json").write_text(json.dumps(report, indent=1))
    a = report["settings"]
    lines = [
        "# envhub trainer vs TRL GRPOTrainer (CPU, side by side)",
        "",
        f"`python benchmarks/trainer_vs_trl.py --steps {a['steps']} --prompts {a['prompts']} --group {a['group']} "
        f"--max-new-tokens {a['max_new_tokens']} --order {a['order']} --rounds {a['rounds']}` (started {report['started_at']}; torch {report['versions']['torch']}, "
        f"trl {report['versions']['trl']}). Machine: {machine_in_words(report['machine'])}.",
        "",
        f"SmolLM2-135M-Instruct + LoRA r16/alpha32 on all linear layers, arithmetic easy, {a['prompts']} prompts x "
        f"{a['group']} completions per step, at most {a['max_new_tokens']} new tokens, temperature 1, dapo loss, "
        "one optimizer step per batch, 2 torch threads. The s/step and completions/s means leave out the first "
        "(warm-up) step and are medians over the rounds; the mean reward counts every step.",
        "",
        "| trainer | s/step | rollout s/step | weight sync s/step | tokens/s (verl) | completions/s | mean reward per step | load avg (1, 5, 15 min) at each run's end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in report["runs"].items():
        s = report["summary"][name]
        load = "; ".join(", ".join(f"{x:.1f}" for x in run["load"]) for run in runs)
        rollout = "-" if s["rollout_s"] is None else f"{s['rollout_s']:.1f}"
        tokens = "-" if s["tokens_per_s"] is None else f"{s['tokens_per_s']:.0f}"
        sync = "-" if s["sync_s"] is None else f"{s['sync_s']:.2f}"
        lines.append(f"| {name} | {s['s_per_step']:.1f} | {rollout} | {sync} | {tokens} | {s['completions_per_s']:.3f} | {s['mean_reward']:.3f} | {load} |")
    for trl_name in [n for n in report["runs"] if n in TRL_ROWS]:
        trl_rate = report["summary"][trl_name]["completions_per_s"]
        for name in [n for n in report["runs"] if n not in TRL_ROWS]:
            ratio = report["summary"][name]["completions_per_s"] / trl_rate
            lines += ["", f"{name} / {trl_name} completions per second: **{ratio:.2f}x**."]
    runs = [(f"{name} (round {run['round']})", run) for name, rs in report["runs"].items() for run in rs]
    lines += [
        "",
        "Per-step times (s), in the order the runs ran within each row's list:",
        "",
        *[f"- {label}: {', '.join(f'{x:.1f}' for x in run['step_s'])}" for label, run in runs],
        "",
        "Mean reward per step (the arithmetic rubric, 0 to 1):",
        "",
        *[f"- {label}: {', '.join(f'{x:.3f}' for x in run['reward'])}" for label, run in runs],
        "",
        "What envhub's trainer does differently: its sampler prefills a group's shared prompt once and copies its "
        "KV cache to the G samples, and the head that all prompts share (the chat template's system prompt and the "
        "instructions) once for all groups; it folds the LoRA update into the base weights while decoding "
        "(restored exactly afterwards) and drops finished sequences from the batch; its loss forward runs each "
        "prompt, and the shared head, once for all the samples that share it, and the vocabulary head only on "
        "completion positions. The load averages say how busy the 2 cores were besides each row's run.",
        "",
        *report.get("notes", []),  # the author's reading of the figures (markdown lines), kept in the JSON
        "",
    ]
    (HERE / "trainer_vs_trl.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
