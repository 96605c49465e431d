"""GRPO, DAPO and CISPO with LoRA, on multi-turn episodes from envhub environments.

The whole algorithm, top to bottom (it is :func:`train`'s loop):

    for step in range(steps):
        1. rollouts    P groups x G episodes through ``envhub.make(...)`` (any runtime, any number
                       of turns); each turn's prompt is the chat template of the conversation, the
                       tokens kept are exactly the ids the policy sampled.
        2. rewards     episode return (the rubric total at the end, plus any per-step reward);
                       DAPO: soft overlong punishment added to it; with a group judge, its
                       relative score of each episode within the group, weighted.
        3. groups      DAPO: dynamic sampling drops groups whose rewards are all equal (they carry
                       no signal) and samples another P groups, up to a bound on rounds.
        4. advantages  A_i = (R_i - mean_group(R)) [/ std_group(R) or std_batch(R)], one per
                       episode, broadcast to each of its sampled tokens.
        5. update      LoRA parameters, one or more optimizer steps on the grpo, dapo or cispo
                       objective below; environment and tool tokens carry no loss, and DAPO masks
                       completions cut by the length limit.
        6. outputs     metrics.jsonl, rollouts.jsonl, a peft adapter checkpoint, provenance.json.

Before the first step, every environment is made and reset once and every judge endpoint is asked
(``envhub.evaluation.preflight``), and the output folder must hold this run or none: a run that
cannot do what was asked fails at once (TrainRunError). A step whose episodes all errored (or more
than ``max_error_rate`` of them) stops the run; Ctrl-C saves a checkpoint of the last finished step.

Notation: o_i is episode i's sampled tokens (|o_i| of them), r_{i,t} = pi_theta(o_{i,t}|...) /
pi_old(o_{i,t}|...) the importance ratio, A_i its advantage, sg() stop-gradient.

grpo (DeepSeekMath, Shao et al. 2024, eq. 3), sequence-mean then batch-mean:
    J = 1/G sum_i 1/|o_i| sum_t [ min(r A, clip(r, 1-eps, 1+eps) A) - beta * KL_t ]
    KL_t = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1        (k3 estimator, >= 0)
    pi_ref is the base model: the same network with the LoRA adapter disabled.

dapo (Yu et al. 2025, eq. 8), clip-higher and token-level normalisation over the whole batch:
    J = 1/sum_i |o_i| sum_i sum_t min(r A, clip(r, 1-eps_low, 1+eps_high) A)
    eps_low = 0.2, eps_high = 0.28; plus dynamic sampling, overlong reward shaping and masking
    of truncated completions (steps 2, 3, 5 above).

cispo (MiniMax-M1, 2025, eq. 4-5), REINFORCE weighted by a clipped, stop-gradient IS weight:
    J = 1/sum_i |o_i| sum_i sum_t sg(clip(r, r_min, r_max)) A log pi_theta(o_{i,t}|...)
    r_max is an ABSOLUTE upper bound on the ratio (the paper's 1 + eps_high^IS), default 5.0;
    r_min is off by default (the paper sets eps_low^IS large, i.e. no lower bound). Unlike the
    clipped objectives, every token keeps its gradient sg(w) A grad log pi, clipped or not.

The loss minimised is -J. Run it with ``train(make_config("cispo", envs=["arithmetic"]))`` or
``python -m trainers arithmetic --algo cispo --steps 20``. The rest of the trainer lives beside
this file: :mod:`trainers.config` (every knob), :mod:`trainers.rollout` (episodes, token
bookkeeping, log-probs), :mod:`trainers.generation` (sampling), :mod:`trainers.outputs`
(checkpoints, metrics, provenance), :mod:`trainers.cli` (``envhub train``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from envhub.env.judge import GroupJudge
from envhub.errors import EntrypointError, EvalRunError, JudgeError, TrainRunError
from envhub.models.precision import autocast, cpu_has_bf16
from envhub.runtime.env_pool import EnvPool
from trainers.config import DEFAULT_RUNS_DIR, DEMO_SETTINGS, TrainConfig, make_config, validate
from trainers.generation import choose_backend, make_backend
from trainers.monitor import HackMonitor
from trainers.outputs import Progress, RunOutputs, environment_identities, rollout_record
from trainers.rollout import Rollout, derive_seed, micro_batches, pad_rows, rollout, sampled_logprobs, split_rows
from trainers.schedule import lr_multiplier

__all__ = [
    "LossOutput",
    "TrainResult",
    "demo",
    "group_advantages",
    "judge_groups",
    "overlong_penalty",
    "plan_groups",
    "policy_loss",
    "preflight",
    "resolve_output_dir",
    "train",
]


# =============================================================================================
# Advantages, rewards, losses (pure tensor code, unit-tested by hand)
# =============================================================================================


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, norm: str = "group", eps: float = 1e-6
) -> torch.Tensor:
    """A_i = R_i - mean_{j in group(i)} R_j, divided by the group's std (``group``), the whole
    batch's std (``batch``) or nothing (``none``). std is the population std (divide by n).

    rewards: [N] float, group_ids: [N] int -> [N].
    """
    rewards = rewards.float()
    groups, inverse = torch.unique(group_ids, return_inverse=True)
    count = torch.zeros(len(groups)).index_add_(0, inverse, torch.ones_like(rewards))
    mean = torch.zeros(len(groups)).index_add_(0, inverse, rewards) / count
    centred = rewards - mean[inverse]
    if norm == "group":
        var = torch.zeros(len(groups)).index_add_(0, inverse, centred**2) / count
        return centred / (var.sqrt()[inverse] + eps)
    if norm == "batch":
        return centred / (rewards.std(unbiased=False) + eps)
    if norm == "none":
        return centred
    raise ValueError(f"advantage_norm must be group, batch or none, not {norm!r}")


def overlong_penalty(length: int, max_len: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment (eq. 13) for a completion of ``length`` tokens:
        0                                  if length <= max_len - buffer
        ((max_len - buffer) - length) / buffer   if max_len - buffer < length <= max_len
        -1                                 if length > max_len
    times ``factor``. It is added to the episode's reward."""
    if buffer <= 0 or length <= max_len - buffer:
        return 0.0
    if length > max_len:
        return -1.0 * factor
    return factor * ((max_len - buffer) - length) / buffer


@dataclass
class LossOutput:
    loss: torch.Tensor
    """Scalar to backpropagate (already divided by the minibatch normaliser)."""
    stats: dict[str, float]
    """Sums over the tokens of this call: clipped, tokens, ratio_sum, ratio_max, kl_sum, objective."""


def policy_loss(
    algo: str,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    cispo_max_ratio: float | None = 5.0,
    cispo_min_ratio: float | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    num_sequences: int | None = None,
    num_tokens: int | None = None,
) -> LossOutput:
    """-J for a (micro)batch; the formulas are in the module docstring.

    logp, old_logp, ref_logp, mask: [B, T] (mask 1 on the policy's own sampled tokens);
    advantages: [B]. ``num_sequences`` / ``num_tokens`` are the normalisers of the whole
    minibatch being accumulated (grpo divides by sequences, dapo/cispo by tokens); they default to
    this call's own counts.
    """
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(-1)  # [B, 1]: one advantage per episode
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)  # [B, T]
    if algo in ("grpo", "dapo"):
        unclipped = ratio * adv
        clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv
        objective = torch.minimum(unclipped, clipped)  # [B, T]
        # tokens whose gradient the clip removed: ratio beyond the bound on the side A pushes
        is_clipped = ((adv > 0) & (ratio > 1 + epsilon_high)) | ((adv < 0) & (ratio < 1 - epsilon_low))
    elif algo == "cispo":
        weight = ratio.detach()
        if cispo_max_ratio is not None:
            weight = weight.clamp(max=cispo_max_ratio)
        if cispo_min_ratio is not None:
            weight = weight.clamp(min=cispo_min_ratio)
        objective = weight * adv * logp  # sg(w) A log pi: gradient w A grad log pi on every token
        is_clipped = torch.zeros_like(ratio, dtype=torch.bool)
        if cispo_max_ratio is not None:
            is_clipped |= ratio > cispo_max_ratio
        if cispo_min_ratio is not None:
            is_clipped |= ratio < cispo_min_ratio
    else:
        raise ValueError(f"unknown algo {algo!r}")

    kl = None
    if beta and ref_logp is not None:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1  # k3 estimator of KL(pi_theta || pi_ref), per token, >= 0
        objective = objective - beta * kl

    if algo == "grpo":
        # sequence mean, then mean over the minibatch's sequences
        per_seq = (objective * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B]
        denominator = num_sequences if num_sequences is not None else logp.shape[0]
        loss = -per_seq.sum() / max(denominator, 1)
    else:
        # token-level: every sampled token of the minibatch weighs the same
        denominator = num_tokens if num_tokens is not None else int(mask.sum().item())
        loss = -(objective * mask).sum() / max(denominator, 1)

    with torch.no_grad():
        on = mask.bool()
        stats = {
            "tokens": float(on.sum()),
            "clipped": float((is_clipped & on).sum()),
            "ratio_sum": float(ratio[on].sum()) if on.any() else 0.0,
            "ratio_max": float(ratio[on].max()) if on.any() else 0.0,
            "kl_sum": float(kl[on].sum()) if kl is not None and on.any() else 0.0,
        }
    return LossOutput(loss, stats)


def judge_groups(judge: GroupJudge, groups: Sequence[list[Rollout]], weight: float) -> list[str]:
    """Score each group with the relative judge, all groups at once, and add ``weight`` times each
    episode's score to its shaped reward. A group the judge fails on keeps ``judge_score`` None
    (no made-up score: the caller drops it); returns those failures' messages."""
    if not groups:
        return []
    with ThreadPoolExecutor(max_workers=min(len(groups), 8), thread_name_prefix="envhub-judge") as executor:
        futures = [executor.submit(judge, members) for members in groups]
    errors = []
    for members, future in zip(groups, futures):
        try:
            scores = future.result()
        except JudgeError as exc:
            errors.append(str(exc))
            continue
        for r, score in zip(members, scores):
            r.judge_score = score.value
            r.shaped_reward += weight * score.value
    return errors


# =============================================================================================
# The training loop
# =============================================================================================


@dataclass
class TrainResult:
    """What ``train`` returns."""

    adapter_dir: Path
    """The final peft adapter (``PeftModel.from_pretrained(base, adapter_dir)``)."""
    output_dir: Path
    metrics: list[dict[str, Any]]
    """One dict per step (also in output_dir/metrics.jsonl)."""
    provenance: dict[str, Any]


def plan_groups(config: TrainConfig, step: int, round_: int, count: int, first_group: int) -> list[tuple[int, int, int]]:
    """(group, env_index, task_seed) for ``count`` new groups of ``group_size`` episodes."""
    rng = random.Random(derive_seed(config.seed, "plan", step, round_))
    weights = [max(spec.weight, 0.0) for spec in config.envs]
    plan = []
    for g in range(first_group, first_group + count):
        env_index = rng.choices(range(len(config.envs)), weights=weights)[0]
        task_seed = rng.randrange(2**31)
        plan += [(g, env_index, task_seed)] * config.group_size
    return plan


def resolve_output_dir(config: TrainConfig) -> TrainConfig:
    """``config`` with its output folder named: a new ``runs/train/ENV-MODEL-TIMESTAMP`` when it names none."""
    if config.output_dir:
        return config
    from envhub.evaluation.runner import default_out_dir

    envs = "+".join(Path(s.name).name if Path(s.name).is_dir() else s.name.replace("/", "_") for s in config.envs)
    return dataclasses.replace(config, output_dir=str(default_out_dir(envs, model=config.model, root=Path(DEFAULT_RUNS_DIR))))


def preflight(config: TrainConfig) -> list[dict[str, Any]]:
    """Make and reset every environment of ``config`` once, and ask every judge endpoint it uses;
    returns each environment's identity (ref, digest). TrainRunError names the first problem."""
    from envhub.evaluation.preflight import check_endpoint, check_environment

    run_dir = str(config.output_dir)
    identities = []
    for spec in config.envs:
        try:
            identities.append(check_environment(
                spec.name, runtime=spec.runtime, env_kwargs=spec.kwargs, split=config.split, seed=0, run_dir=run_dir
            ))  # fmt: skip
        except EvalRunError as exc:
            hint = exc.hint
            if isinstance(exc.__cause__, EntrypointError) and spec.kwargs:  # most often a misspelt kwarg
                hint = (f"check the keyword arguments ({', '.join(spec.kwargs)}), given by --env-kwargs or "
                        f"ENV?key=value: the environment's factory takes them by name")  # fmt: skip
            elif hint and "--env-arg" in hint:
                hint = hint.replace("--env-arg", "--env-kwargs")
            elif hint is None:
                hint = "fix the value named above (given by --env-kwargs or ENV?key=value)"
            raise TrainRunError(run_dir, exc.reason, hint=hint) from exc
    endpoints = []
    if config.judge_prompt is not None:
        client = GroupJudge(config.judge_prompt, base_url=config.judge_base_url, model=config.judge_model).client()
        endpoints.append(("the group judge (--judge-base-url)", client.base_url, client.model, client.api_key))
    for spec in config.envs:  # judge criteria of the environments' own rubrics
        pool = EnvPool(spec.name, runtime=spec.runtime, kwargs=spec.kwargs)
        try:
            criteria = getattr(getattr(pool.take(), "rubric", None), "criteria", [])
            for c in criteria:
                if getattr(c, "kind", "") == "judge" and c.base_url and c.model:
                    endpoints.append((f"the judge of {spec.name}'s criterion `{c.name}`", c.base_url, c.model,
                                      os.environ.get(getattr(c, "api_key_env", "") or "") or None))  # fmt: skip
        finally:
            pool.close()
    for who, base_url, model, api_key in dict.fromkeys(endpoints):
        try:
            check_endpoint(base_url, model, api_key=api_key, run_dir=run_dir)
        except EvalRunError as exc:
            raise TrainRunError(
                run_dir, f"{who}: {exc.reason}",
                hint=f"start the judge at {base_url} (`envhub serve-model --port 8000` serves the local model at "
                "http://127.0.0.1:8000/v1), or point --judge-base-url / ENVHUB_JUDGE_BASE_URL at one that runs",
            ) from exc  # fmt: skip
    return identities


def _error_types(rollouts: Sequence[Rollout]) -> str:
    counts = Counter(r.error.partition(":")[0] for r in rollouts if r.error)
    return ", ".join(f"{kind}: {n}" for kind, n in counts.most_common())


def _step_errors(step: int, generated: Sequence[Rollout], max_error_rate: float | None) -> tuple[str | None, bool]:
    """(a line on the step's errored episodes or None, whether they stop the run)."""
    errors = [r for r in generated if r.error]
    if not errors:
        return None, False
    n = len(generated)
    first = errors[0].error.strip().splitlines()[0][:300]
    if len(errors) == n:
        return f"every episode of step {step} ({n} of {n}) ended in an error ({_error_types(errors)}); the first: {first}", True
    rate = len(errors) / n
    line = f"step {step}: {len(errors)} of {n} episodes ({rate:.0%}) ended in an error ({_error_types(errors)}); the first: {first}"
    if max_error_rate is not None and rate > max_error_rate:
        return f"{line}: more than the --max-error-rate of {max_error_rate:.0%}", True
    return line, False


def train(config: TrainConfig, *, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a LoRA adapter with ``config``; the module docstring gives the algorithm.

    ``log`` gets the run's one-line notes (resuming, errored episodes, an interruption); default
    print. Raises TrainRunError before the first step when an environment, its kwargs, a judge
    endpoint or the output folder cannot serve the run, and during it when a step's episodes error
    (all of them, or more than ``max_error_rate``). On KeyboardInterrupt it saves a checkpoint of
    the last finished step, says so, and raises it again.
    """
    import peft

    from envhub.models.decoding import require_row_selection
    from envhub.models.loading import load_policy, resolve_model

    say = log or print
    validate(config)
    config = resolve_output_dir(config)
    identities = preflight(config)
    model_path = resolve_model(config.model)
    outputs = RunOutputs(config, trainer=__name__, model_path=model_path, environments=identities)
    start_step = outputs.prepare()
    if start_step >= config.steps and outputs.latest is not None and (outputs.dir / "adapter").is_dir():
        say(f"{outputs.dir} already holds all {start_step} steps of this run: nothing to train "
            "(--steps N for more, --overwrite to train it again)")  # fmt: skip
        return TrainResult(adapter_dir=outputs.dir / "adapter", output_dir=outputs.dir, metrics=outputs.metrics,
                           provenance=outputs.provenance)  # fmt: skip
    if start_step:
        replayed = f"; the {outputs.dropped_steps} step(s) after it run again" if outputs.dropped_steps else ""
        say(f"resuming from step {start_step} of {config.steps} in {outputs.dir}{replayed}")
    if config.threads:
        torch.set_num_threads(config.threads)

    # ---- the policy: base weights frozen, LoRA adapters trainable ------------------------------
    base, tokenizer = load_policy(model_path, device=config.device, dtype=config.dtype)
    share_head = require_row_selection(base).share_head  # refuses recurrent-state models before any work
    device = next(base.parameters()).device
    torch.manual_seed(derive_seed(config.seed, "lora-init"))
    lora = peft.LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules[0] if config.lora_target_modules == ["all-linear"] else config.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(base, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, betas=tuple(config.adam_betas), weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lr_multiplier(
            warmup=config.warmup_steps,
            decay=config.lr_decay,
            total_updates=config.steps * config.minibatches * config.epochs_per_batch,
            budget_s=config.max_train_seconds,
        ),
    )
    outputs.load_checkpoint(model, optimizer, scheduler)

    backend_name, why = choose_backend(config.backend)
    say(f"generation: {backend_name} ({why})")
    if config.mixed_precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        say("mixed_precision bf16: this CPU has no bfloat16 instructions (avx512_bf16, AMX), so its "
            "bfloat16 matmuls are emulated: on an AVX2-only CPU a step took 8x as long as in float32 "
            "(benchmarks/trainer_learning_bf16.md); --mixed-precision no to compare")  # fmt: skip
    backend = make_backend(
        backend_name,
        model,
        tokenizer,
        model_path=model_path,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        lora_rank=config.lora_r,
        weight_sync=config.weight_sync,
        mixed_precision=config.mixed_precision,
    )
    backend.update_weights(model)
    pools = [EnvPool(spec.name, runtime=spec.runtime, kwargs=spec.kwargs) for spec in config.envs]
    judge = None
    if config.judge_prompt is not None:
        judge = GroupJudge(config.judge_prompt, base_url=config.judge_base_url, model=config.judge_model)
    # pi_old: sg(pi_theta) is exact and free when each batch gets a single optimizer step
    old_source = config.old_logprobs
    if old_source == "auto":
        old_source = "current" if config.minibatches * config.epochs_per_batch == 1 else "recompute"
    if old_source == "sampler" and backend_name != "transformers":
        old_source = "recompute"

    # the reward-hacking monitor: detectors on every step's rollouts, the sentinel, report.html
    monitor = None if config.on_hack == "off" else HackMonitor(config, outputs.dir, history=outputs.metrics, pools=pools)
    progress = Progress(config.steps, start_step, enabled=config.progress, time_budget_s=config.max_train_seconds, log=say)
    model_record = outputs.provenance["model"]
    t_start = time.perf_counter()
    finished = start_step  # steps whose update, metrics and rollouts are all written
    snapshot: tuple[list[torch.Tensor], dict[str, Any], dict[str, Any]] | None = None  # state before an unlogged update
    try:
        for step in range(start_step, config.steps):
            t0 = time.perf_counter()
            planned = config.prompts_per_step * config.group_size
            # Everything random in a step derives from (seed, step): a resumed run replays it exactly.
            torch.manual_seed(derive_seed(config.seed, "step", step))

            # ---- 1. rollouts, 2. rewards, 3. groups (dynamic sampling) ---------------------------
            kept: list[list[Rollout]] = []  # groups with signal, each a list of G rollouts
            generated: list[Rollout] = []
            dropped_groups = 0
            judge_errors: list[str] = []
            rounds = 0
            while len(kept) < config.prompts_per_step and rounds < max(config.max_sampling_rounds, 1):
                # Every round samples a whole batch of groups, refills too (over-sampling, as DAPO's own
                # implementation does): a batched rollout of P groups costs little more than of a few, and
                # fewer steps end with too few groups. The first groups with signal are kept.
                count = config.prompts_per_step
                plan = plan_groups(config, step, rounds, count, rounds * count)
                episodes = rollout(
                    backend,
                    tokenizer,
                    pools,
                    plan,
                    split=config.split,
                    max_new_tokens=config.max_new_tokens,
                    max_episode_tokens=config.max_episode_tokens,
                    seed=derive_seed(config.seed, "sample", step, rounds),
                    on_progress=lambda done, _n, before=len(generated): progress.rollouts(min(before + done, planned), planned),
                    env_stops=config.env_stops,
                )
                rounds += 1
                generated += episodes
                by_group: dict[int, list[Rollout]] = {}
                for r in episodes:
                    if r.error is not None:
                        continue  # failed episodes are dropped and counted (episodes/errors)
                    r.shaped_reward = r.reward
                    if config.overlong_shaping:
                        r.shaped_reward += overlong_penalty(
                            r.longest_turn, config.max_new_tokens, config.overlong_buffer, config.overlong_penalty_factor
                        )
                    by_group.setdefault(r.group, []).append(r)
                if judge is not None:
                    judge_errors += judge_groups(judge, [m for m in by_group.values() if len(m) >= 2], config.judge_weight)
                for members in by_group.values():
                    if len(members) < 2 or (judge is not None and members[0].judge_score is None):
                        dropped_groups += 1  # no relative signal in one episode; an unjudged group has no reward
                        continue
                    rewards = [r.shaped_reward for r in members]
                    if config.dynamic_sampling and max(rewards) - min(rewards) < 1e-9:
                        dropped_groups += 1  # all equal: zero advantage everywhere, no signal
                        continue
                    kept.append(members)
                if not config.dynamic_sampling:
                    break
            kept = kept[: config.prompts_per_step]
            batch = [r for members in kept for r in members]  # [N] rollouts, group by group
            for r in batch:
                r.trained = True
            t_rollout = time.perf_counter() - t0
            note, stop = _step_errors(step + 1, generated, config.max_error_rate)
            if stop:
                raise TrainRunError(
                    str(outputs.dir), note,
                    hint=f"every episode's error is in the message above; try the environment by hand (`envhub play "
                    f"{config.envs[0].name}`), fix the cause, then rerun"
                    + (f" (the {finished} finished step(s) resume)" if finished else ""),
                )  # fmt: skip
            if note:
                progress.note(note)

            # ---- 4. advantages: one per episode, on each of its loss tokens ----------------------
            adv = None
            if batch:
                adv = group_advantages(
                    torch.tensor([r.shaped_reward for r in batch]),
                    torch.tensor([r.group for r in batch]),
                    config.advantage_norm,
                )  # [N]
                for r, a in zip(batch, adv.tolist()):
                    r.advantage = a
                    r.loss_sampled = [False] * len(r.sampled) if config.mask_truncated and r.truncated else r.sampled

            # ---- 5. update: minibatches of whole groups, micro-batches accumulated ---------------
            t1 = time.perf_counter()
            stats = {"loss/policy": 0.0, "clip/frac": 0.0, "ratio/mean": 1.0, "ratio/max": 1.0, "grad/norm": 0.0}
            if config.beta:
                stats["kl/mean"] = 0.0
            progress.updating()
            step_lr = scheduler.get_last_lr()[0]  # the rate of this step's (first) update, recorded below
            t_sync = 0.0  # the sampler brought up to the new weights (part of the update's time)
            # What to go back to if Ctrl-C comes before this step is written: its update is all or nothing.
            snapshot = ([p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict()), scheduler.state_dict())
            if batch:
                everyone = list(range(len(batch)))  # indices into batch, kept in rollout order
                # pi_old (when recomputed) and pi_ref of each rollout's tokens, before any update
                old_rows: dict[int, torch.Tensor] = {}
                ref_rows: dict[int, torch.Tensor] = {}
                if old_source == "recompute" or config.beta:
                    model.eval()
                    with torch.no_grad(), autocast(device, config.mixed_precision):
                        for chunk, packed in micro_batches(batch, everyone, size=config.micro_batch_size, pad_id=tokenizer.pad_token_id, device=device, max_tokens=config.micro_batch_tokens, share_head=share_head):
                            if old_source == "recompute":
                                old_rows |= split_rows(sampled_logprobs(model, packed, config.temperature, config.top_p)[0], chunk, batch)
                            if config.beta:
                                with model.disable_adapter():  # pi_ref: the base model, no second copy
                                    ref_rows |= split_rows(sampled_logprobs(model, packed, config.temperature, config.top_p)[0], chunk, batch)
                model.train()
                rng = random.Random(derive_seed(config.seed, "shuffle", step))
                groups = sorted({r.group for r in batch})
                totals = {"loss": 0.0, "tokens": 0.0, "clipped": 0.0, "ratio_sum": 0.0, "ratio_max": 0.0, "kl_sum": 0.0, "grad": 0.0}
                n_updates = 0
                for _epoch in range(config.epochs_per_batch):
                    rng.shuffle(groups)
                    for m in range(config.minibatches):
                        chosen = set(groups[m :: config.minibatches])
                        minibatch = [i for i in everyone if batch[i].group in chosen]
                        if not minibatch:
                            continue
                        n_tokens = sum(sum(batch[i].loss_sampled) for i in minibatch)  # dapo/cispo's normaliser
                        optimizer.zero_grad(set_to_none=True)
                        for chunk, packed in micro_batches(batch, minibatch, size=config.micro_batch_size, pad_id=tokenizer.pad_token_id, device=device, max_tokens=config.micro_batch_tokens, share_head=share_head):
                            with autocast(device, config.mixed_precision):  # backward runs outside, as autocast asks
                                logp, _sampled = sampled_logprobs(model, packed, config.temperature, config.top_p)  # [B, S]
                            width = logp.shape[1]
                            if old_source == "current":
                                old_logp = logp.detach()
                            elif old_source == "sampler":
                                old_logp = packed["sampler_logp"]
                            else:
                                old_logp = pad_rows(old_rows, chunk, width)
                            out = policy_loss(
                                config.algo,
                                logp,
                                old_logp,
                                packed["adv"],
                                packed["loss_mask"],
                                epsilon_low=config.epsilon_low,
                                epsilon_high=config.epsilon_high,
                                cispo_max_ratio=config.cispo_max_ratio,
                                cispo_min_ratio=config.cispo_min_ratio,
                                ref_logp=pad_rows(ref_rows, chunk, width) if config.beta else None,
                                beta=config.beta,
                                num_sequences=len(minibatch),
                                num_tokens=n_tokens,
                            )
                            out.loss.backward()
                            totals["loss"] += float(out.loss.detach())
                            for key in ("tokens", "clipped", "ratio_sum", "kl_sum"):
                                totals[key] += out.stats[key]
                            totals["ratio_max"] = max(totals["ratio_max"], out.stats["ratio_max"])
                        if config.max_grad_norm:
                            totals["grad"] += float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
                        else:
                            totals["grad"] += float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)))
                        optimizer.step()
                        scheduler.step()
                        n_updates += 1
                model.eval()
                tokens_seen = max(totals["tokens"], 1.0)
                stats.update(
                    {
                        "loss/policy": totals["loss"] / max(n_updates, 1),
                        "clip/frac": totals["clipped"] / tokens_seen,
                        "ratio/mean": totals["ratio_sum"] / tokens_seen,
                        "ratio/max": totals["ratio_max"],
                        "grad/norm": totals["grad"] / max(n_updates, 1),
                        "tokens/trained": totals["tokens"] / max(config.epochs_per_batch, 1),
                    }
                )
                if config.beta:
                    stats["kl/mean"] = totals["kl_sum"] / tokens_seen
                synced_at = time.perf_counter()
                backend.update_weights(model)
                t_sync = time.perf_counter() - synced_at
            t_train = time.perf_counter() - t1
            step_s = time.perf_counter() - t0

            # ---- 6. outputs: metrics.jsonl, checkpoint, provenance -------------------------------
            ok = [r for r in generated if r.error is None]
            row: dict[str, Any] = {
                "step": step + 1,
                "reward/mean": _mean([r.reward for r in ok]),
                "reward/std": _std([r.reward for r in ok]),
                "reward/shaped_mean": _mean([r.shaped_reward for r in ok]),
                "reward/trained_mean": _mean([r.reward for r in batch]),
            }
            for name in sorted({name for r in ok for name in r.criteria}):
                row[f"reward/criterion/{name}"] = _mean([r.criteria[name] for r in ok if name in r.criteria])
            if judge is not None:
                row["reward/judge_mean"] = _mean([r.judge_score for r in ok if r.judge_score is not None])
                row["judge/errors"] = len(judge_errors)
            row.update(stats)
            tokens = sum(len(r.ids) for r in generated if r.ids)
            row.update(
                {
                    "adv/abs_mean": float(adv.abs().mean()) if adv is not None else 0.0,
                    "episodes/count": len(generated),
                    "episodes/errors": sum(r.error is not None for r in generated),
                    "episodes/trained": len(batch),
                    "episodes/truncated_frac": _mean([float(r.truncated) for r in ok]),
                    "episodes/turns_mean": _mean([r.turns for r in ok]),
                    "groups/kept": len(kept),
                    "groups/dropped": dropped_groups,
                    "sampling/rounds": rounds,
                    "completion/len_mean": _mean([r.completion_tokens for r in ok]),
                    "perf/rollout_s": t_rollout,
                    "perf/train_s": t_train,
                    "perf/sync_s": t_sync,
                    "perf/step_s": step_s,
                    "perf/tokens_per_s": tokens / step_s,  # verl: (prompt + completion tokens) / step time
                    "perf/completions_per_s": len(generated) / step_s,
                    "lr": step_lr,
                }
            )
            errors = [r.error for r in generated if r.error]
            if errors:
                row["episodes/first_error"] = errors[0][:300]
            if judge_errors:
                row["judge/first_error"] = judge_errors[0][:300]
            outputs.log_rollouts([
                rollout_record(r, step=step + 1, split=config.split, environment=identities[r.env_index],
                               env_kwargs=config.envs[r.env_index].kwargs, model=model_record)
                for r in generated
            ])  # fmt: skip
            alerts = monitor.observe(step + 1, generated, row, model=model, tokenizer=tokenizer) if monitor else []
            outputs.log(row)
            if monitor is not None:
                monitor.publish()
            stop = bool(alerts) and config.on_hack == "stop"  # a checkpoint of this step first, then the end
            finished, snapshot = step + 1, None
            out_of_time = config.max_train_seconds is not None and time.perf_counter() - t_start > config.max_train_seconds
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps or out_of_time or stop:
                outputs.save_checkpoint(step + 1, model, optimizer, scheduler, environment_identities(config.envs, pools))
            progress.update(row)
            if stop:
                outputs.provenance["stopped_by_monitor"] = {"step": step + 1, "detectors": [a["detector"] for a in alerts]}
            if out_of_time or stop:
                break
    except KeyboardInterrupt:
        progress.close()
        if snapshot is not None:  # interrupted inside a step's update: back to the last finished step
            for p, saved in zip(params, snapshot[0]):
                p.data.copy_(saved)
            optimizer.load_state_dict(snapshot[1])
            scheduler.load_state_dict(snapshot[2])
        saved_at = ""
        if finished > outputs.checkpoint_step:
            outputs.save_checkpoint(finished, model, optimizer, scheduler, environment_identities(config.envs, pools))
            saved_at = f"; checkpoint {outputs.latest}"
        say(f"interrupted: {finished} of {config.steps} steps done in {outputs.dir} (metrics.jsonl has steps 1-{finished}"
            f"{saved_at}); run the same command with --output-dir {outputs.dir} to resume from step {outputs.checkpoint_step}")  # fmt: skip
        raise
    finally:
        progress.close()
        for pool in pools:
            pool.close()
        if monitor is not None:
            monitor.close()
        outputs.close()

    adapter_dir = outputs.finish(environment_identities(config.envs, pools))
    return TrainResult(adapter_dir=adapter_dir, output_dir=outputs.dir, metrics=outputs.metrics, provenance=outputs.provenance)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _std(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    m = _mean(values)
    return float(math.sqrt(sum((v - m) ** 2 for v in values) / len(values)))


def demo(minutes: float = 5.0, *, output_dir: str = "runs/demo-cispo", **overrides: Any) -> TrainResult:
    """Train CISPO on ``arithmetic`` (starter) for ``minutes`` of wall clock and return the result
    (``result.adapter_dir`` is the peft adapter). Runs on CPU with the embedded default model."""
    config = make_config(
        "cispo",
        envs=["arithmetic?level=starter"],
        overrides={**DEMO_SETTINGS, "output_dir": output_dir, "max_train_seconds": minutes * 60, "overwrite": True, **overrides},
    )
    return train(config)
