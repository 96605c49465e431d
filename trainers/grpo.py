"""GRPO, DAPO and CISPO with LoRA, on multi-turn episodes from envhub environments.

The whole algorithm, top to bottom:

    for step in range(steps):
        1. rollouts    P groups x G episodes through ``envhub.make(...)`` (any runtime, any number
                       of turns); each turn's prompt is the chat template of the conversation, the
                       tokens kept are exactly the ids the policy sampled.
        2. rewards     episode return (the rubric total at the end, plus any per-step reward);
                       DAPO: soft overlong punishment added to it.
        3. groups      DAPO: dynamic sampling drops groups whose rewards are all equal (they carry
                       no signal) and samples another P groups, up to a bound on rounds.
        4. advantages  A_i = (R_i - mean_group(R)) [/ std_group(R) or std_batch(R)], one per
                       episode, broadcast to each of its sampled tokens.
        5. update      LoRA parameters, one or more optimizer steps on the grpo, dapo or cispo
                       objective below; environment and tool tokens carry no loss, and DAPO masks
                       completions cut by the length limit.
        6. outputs     metrics.jsonl, a peft adapter checkpoint, provenance.json.

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
``python -m trainers arithmetic --algo cispo --steps 20``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from trainers.generation import Backend, Completion, cache_kwarg, make_backend, token_logprobs

__all__ = [
    "ALGO_PRESETS",
    "EnvSpec",
    "Episode",
    "TrainConfig",
    "TrainResult",
    "cli_main",
    "demo",
    "evaluate",
    "group_advantages",
    "make_config",
    "overlong_penalty",
    "policy_loss",
    "rollout",
    "train",
]

Algo = Literal["grpo", "dapo", "cispo"]


# =============================================================================================
# Configuration
# =============================================================================================


@dataclass
class EnvSpec:
    """One environment of the training mix."""

    name: str
    """What ``envhub.make`` takes: a bundled name, a folder, or ``namespace/name@version``."""
    weight: float = 1.0
    """Relative share of the groups drawn from this environment."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment's factory (e.g. ``{"level": "easy"}``)."""
    runtime: str = "inprocess"
    """Where the environment runs: ``inprocess``, ``process``, ``docker``."""

    @classmethod
    def parse(cls, text: str) -> EnvSpec:
        """``NAME[?key=value&key=value][*WEIGHT]``, e.g. ``arithmetic?level=easy*2``."""
        weight = 1.0
        if "*" in text:
            text, _, w = text.rpartition("*")
            weight = float(w)
        name, _, query = text.partition("?")
        kwargs = {}
        for pair in filter(None, query.split("&")):
            key, _, value = pair.partition("=")
            kwargs[key] = _coerce_scalar(value)
        return cls(name=name, weight=weight, kwargs=kwargs)


@dataclass
class TrainConfig:
    """Every knob of a training run. Defaults are the CPU-friendly ones; see ALGO_PRESETS."""

    envs: list[EnvSpec] = field(default_factory=lambda: [EnvSpec("arithmetic", kwargs={"level": "easy"})])
    """Environments to train on (a weighted mix when several)."""
    algo: Algo = "cispo"
    """Objective: ``grpo``, ``dapo`` or ``cispo`` (module docstring gives each formula)."""
    model: str | None = None
    """Policy base model: a Hugging Face id or folder; None is the embedded SmolLM2-135M-Instruct."""
    output_dir: str = "runs/train"
    """Where checkpoints, metrics.jsonl and provenance.json go."""
    seed: int = 0
    """Seeds LoRA init, task draws, sampling and dropout; a resumed run repeats the same steps."""
    split: str = "train"
    """Environment split episodes are drawn from."""

    # --- rollouts ---
    steps: int = 20
    """Number of training steps (one rollout batch, then its optimizer step(s), per step)."""
    prompts_per_step: int = 8
    """P: groups (distinct tasks) per step."""
    group_size: int = 8
    """G: episodes sampled per task; advantages are relative within a group."""
    max_new_tokens: int = 64
    """Per-turn completion length limit (tokens)."""
    max_episode_tokens: int = 2048
    """An episode whose token sequence would exceed this ends, counted as truncated."""
    temperature: float = 1.0
    """Sampling temperature, applied identically when sampling and in the loss's log-probs."""
    top_p: float = 1.0
    """Nucleus sampling mass, applied identically when sampling and in the loss's log-probs."""
    backend: Literal["transformers", "vllm"] = "transformers"
    """Generation backend; vllm needs a GPU and the vllm package."""

    # --- objective ---
    advantage_norm: Literal["group", "batch", "none"] = "group"
    """Divide (R - group mean) by the group's std, the batch's std, or nothing (Dr. GRPO)."""
    epsilon_low: float = 0.2
    """grpo/dapo: lower clip, ratio >= 1 - epsilon_low."""
    epsilon_high: float = 0.2
    """grpo/dapo: upper clip, ratio <= 1 + epsilon_high (dapo's clip-higher: 0.28)."""
    cispo_max_ratio: float = 5.0
    """cispo: ABSOLUTE upper bound on the IS weight (the ratio itself, not 1 + eps): w <= 5.0."""
    cispo_min_ratio: float | None = None
    """cispo: absolute lower bound on the IS weight; None (the paper's choice) means none."""
    beta: float = 0.0
    """KL coefficient to the base model (adapter disabled); 0 skips the reference forward."""
    dynamic_sampling: bool = False
    """dapo: drop groups whose rewards are all equal and sample replacements."""
    max_sampling_rounds: int = 3
    """Bound on rollout rounds per step when dynamic sampling refills (1 = no refill); each round
    samples prompts_per_step new groups and the step keeps the first prompts_per_step with signal."""
    overlong_shaping: bool = False
    """dapo: soft overlong punishment added to the reward (see overlong_penalty)."""
    overlong_buffer: int = 16
    """dapo: L_cache, the length band before max_new_tokens where the penalty ramps to -1."""
    overlong_penalty_factor: float = 1.0
    """Scale of the overlong penalty."""
    mask_truncated: bool = False
    """dapo: completions cut by max_new_tokens carry no loss (overlong filtering)."""

    # --- optimisation ---
    learning_rate: float = 2e-4
    """AdamW learning rate of the LoRA parameters."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear learning-rate warmup, in optimizer steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (0 disables)."""
    minibatches: int = 1
    """Optimizer steps per rollout batch (the batch is split this many ways)."""
    epochs_per_batch: int = 1
    """Passes over each rollout batch (mu in the GRPO paper)."""
    micro_batch_size: int = 16
    """Sequences per forward/backward (gradient accumulation inside a minibatch)."""
    old_logprobs: Literal["auto", "recompute", "sampler"] = "auto"
    """pi_old: ``recompute`` runs a no-grad forward before updating; ``sampler`` uses the
    log-probs recorded at sampling (transformers backend only); ``auto`` uses sg(pi_theta) when
    there is a single optimizer step per batch (exact, free) and ``recompute`` otherwise."""

    # --- LoRA ---
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha (scale alpha / r)."""
    lora_dropout: float = 0.0
    """LoRA dropout (0 keeps the sampler and the trained policy the same function)."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters (peft names; ``all-linear`` = every linear layer but the head)."""

    # --- run ---
    device: str | None = None
    """``cpu``, ``cuda``; None picks CUDA when available."""
    dtype: str | None = None
    """Weights dtype; None is float32 on CPU, bfloat16 on CUDA."""
    threads: int | None = None
    """torch CPU threads; None leaves torch's default."""
    max_train_seconds: float | None = None
    """Wall-clock budget: stop after the step that exceeds it (then save). None: run all steps."""
    checkpoint_every: int = 10
    """Save an adapter checkpoint every this many steps (and always at the end)."""
    resume: bool = True
    """Continue from the latest checkpoint in output_dir when there is one."""
    tensorboard: bool = False
    """Also write TensorBoard event files (needs the tensorboard package)."""
    progress: bool = True
    """Show a progress bar."""


# Paper settings per objective; applied before a config file and CLI overrides.
ALGO_PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath: eps 0.2, KL beta 0.04, std-normalised group advantages.
    "grpo": {"epsilon_low": 0.2, "epsilon_high": 0.2, "beta": 0.04},
    # DAPO: clip-higher, no KL, dynamic sampling, overlong shaping and filtering.
    "dapo": {
        "epsilon_low": 0.2,
        "epsilon_high": 0.28,
        "beta": 0.0,
        "dynamic_sampling": True,
        "overlong_shaping": True,
        "mask_truncated": True,
    },
    # MiniMax-M1: absolute IS-weight cap, no lower bound, no KL; DAPO's sampling tricks.
    "cispo": {
        "cispo_max_ratio": 5.0,
        "cispo_min_ratio": None,
        "beta": 0.0,
        "dynamic_sampling": True,
        "overlong_shaping": True,
    },
}


def _coerce_scalar(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _coerce(name: str, value: Any) -> Any:
    """Turn a CLI string (or TOML value) into the type of TrainConfig field ``name``."""
    if name == "envs":
        items = value if isinstance(value, list) else [v for v in str(value).split(",") if v]
        return [
            EnvSpec(**item) if isinstance(item, dict) else item if isinstance(item, EnvSpec) else EnvSpec.parse(item)
            for item in items
        ]
    default = getattr(TrainConfig(), name)
    if not isinstance(value, str):
        return tuple(value) if isinstance(default, tuple) else value
    if isinstance(default, (list, tuple)):
        parts = [_coerce_scalar(v) for v in value.split(",") if v]
        return tuple(parts) if isinstance(default, tuple) else parts
    if isinstance(default, bool):
        return _coerce_scalar(value) is True
    if isinstance(default, float):
        return None if value.lower() == "none" else float(value)
    return _coerce_scalar(value)


def make_config(
    algo: Algo = "cispo",
    *,
    envs: Sequence[str | EnvSpec] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Config for ``algo``: defaults, then the algo's paper preset, then the TOML file, then
    ``overrides`` (a dict of field -> value; strings are parsed as the field's type)."""
    if algo not in ALGO_PRESETS:
        raise ValueError(f"unknown algo {algo!r}: expected one of {sorted(ALGO_PRESETS)}")
    values: dict[str, Any] = {"algo": algo, **ALGO_PRESETS[algo]}
    if config_file is not None:
        import tomllib

        with open(config_file, "rb") as f:
            data = tomllib.load(f)
        data = dict(data.get("train", data))  # accept a [train] table or top-level keys
        data.pop("algo", None)  # the algo argument decides (the CLI passes the file's when unset)
        values.update(data)
    values.update(overrides or {})
    if envs:
        values["envs"] = list(envs)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config option(s): {', '.join(unknown)}")
    config = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    _validate(config)
    return config


def _validate(config: TrainConfig) -> None:
    if config.algo not in ALGO_PRESETS:
        raise ValueError(f"algo must be one of {sorted(ALGO_PRESETS)}, not {config.algo!r}")
    if config.group_size < 2:
        raise ValueError("group_size must be at least 2 (advantages are relative within a group)")
    if config.cispo_max_ratio is not None and config.cispo_max_ratio < 1.0:
        # An absolute cap below 1 would down-weight every on-policy token: almost surely a
        # "1 + eps" value such as 0.2 passed where an absolute bound is meant.
        raise ValueError(
            f"cispo_max_ratio={config.cispo_max_ratio} is an absolute bound on the importance "
            "ratio and must be >= 1 (e.g. 5.0); it is not an epsilon"
        )
    if not config.envs:
        raise ValueError("at least one environment is needed")
    if config.temperature <= 0:
        raise ValueError("temperature must be > 0 for training (the loss needs a distribution)")


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


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


# =============================================================================================
# Rollouts: episodes through the Env contract, token by token
# =============================================================================================


@dataclass
class Episode:
    """One episode: its full token sequence and which tokens the policy sampled."""

    group: int
    env_index: int
    task_seed: int
    ids: list[int] = field(default_factory=list)
    """Prompt, sampled and environment tokens, in order: what the loss's forward pass reads."""
    sampled: list[bool] = field(default_factory=list)
    """True on the policy's own sampled tokens (the only ones that carry loss)."""
    sampler_logp: list[float] = field(default_factory=list)
    """Sampling-time log-prob of each sampled token (NaN elsewhere)."""
    messages: list[dict[str, str]] = field(default_factory=list)
    """The conversation so far; once the episode is done, all of it, the last reply included."""
    reward: float = 0.0
    """Environment return: sum of step rewards (the rubric total lands on the last step)."""
    shaped_reward: float = 0.0
    """reward plus any shaping (overlong penalty): what advantages are computed from."""
    criteria: dict[str, float] = field(default_factory=dict)
    task_id: str | None = None
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    longest_turn: int = 0
    truncated: bool = False
    """A completion hit max_new_tokens (or the episode hit max_episode_tokens)."""
    done: bool = False
    error: str | None = None


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


_SENTINEL = "\x1fENVHUB-ASSISTANT\x1f"


def bridge_tokens(
    tokenizer: Any, history: list[dict[str, str]], new_messages: list[dict[str, str]], stopped_with: str | None
) -> list[int]:
    """Tokens between the end of a sampled assistant turn and the start of the next one.

    ``history`` ends with the assistant message just sent; ``new_messages`` are the environment's
    replies. The template is rendered with a sentinel in place of the assistant's text, so the
    sampled tokens are never re-tokenised: what follows the assistant text in the template (its
    end-of-turn marker, unless the policy sampled that stop token itself), the new messages and
    the next generation prompt are the bridge. None of these tokens carry loss.
    """
    probe = history[:-1] + [{"role": "assistant", "content": _SENTINEL}]
    base = _render(tokenizer, probe, False)
    full = _render(tokenizer, probe + new_messages, True)
    at = base.rfind(_SENTINEL)
    if at < 0 or not full.startswith(base):
        raise ValueError("the chat template is not append-only; multi-turn rollouts need one that is")
    tail = base[at + len(_SENTINEL) :]
    if stopped_with and tail.startswith(stopped_with):
        tail = tail[len(stopped_with) :]  # the policy already produced the end-of-turn token
    return _encode(tokenizer, tail + full[len(base) :])


def _derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class EnvPool:
    """Environment instances per spec, created on demand and reused across steps."""

    def __init__(self, specs: Sequence[EnvSpec]):
        self.specs = list(specs)
        self.free: list[list[Any]] = [[] for _ in specs]
        self.identities: list[dict[str, Any] | None] = [None] * len(specs)

    def acquire(self, index: int) -> Any:
        if self.free[index]:
            return self.free[index].pop()
        from envhub.runtime.make import make

        spec = self.specs[index]
        env = make(spec.name, runtime=spec.runtime, **spec.kwargs)
        if self.identities[index] is None:
            self.identities[index] = _identity_of(env, spec)
        return env

    def release(self, index: int, env: Any, broken: bool = False) -> None:
        if broken:
            with contextlib.suppress(Exception):
                env.close()
        else:
            self.free[index].append(env)

    def close(self) -> None:
        for envs in self.free:
            for env in envs:
                with contextlib.suppress(Exception):
                    env.close()
            envs.clear()


def _identity_of(env: Any, spec: EnvSpec) -> dict[str, Any]:
    identity = getattr(env, "identity", None)
    rubric = getattr(env, "rubric", None)
    return {
        "spec": dataclasses.asdict(spec),
        "ref": getattr(identity, "ref", spec.name),
        "digest": getattr(identity, "digest", None),
        "rubric_hash": getattr(rubric, "hash", None),
        "max_turns": getattr(env, "max_turns", None),
    }


def rollout(
    backend: Backend,
    tokenizer: Any,
    pool: EnvPool,
    plan: Sequence[tuple[int, int, int]],
    *,
    split: str,
    max_new_tokens: int,
    max_episode_tokens: int,
    seed: int,
) -> list[Episode]:
    """Run one episode per ``(group, env_index, task_seed)`` of ``plan``, all turns in lockstep.

    Every turn, the prompts of all live episodes go to the backend as one batch (identical
    prompts, i.e. a group's first turn, are prefilled once). An exception from the environment
    ends that episode with ``error`` set; it never propagates.
    """
    episodes = [Episode(group=g, env_index=e, task_seed=s) for g, e, s in plan]
    envs: list[Any] = [None] * len(episodes)
    stop_text = {i: tokenizer.decode([i]) for i in getattr(backend, "stop_ids", [])}
    for k, ep in enumerate(episodes):
        try:
            envs[k] = pool.acquire(ep.env_index)
            obs, info = envs[k].reset(seed=ep.task_seed, options={"split": split})
            ep.messages = [dict(m) for m in obs]
            ep.task_id = info.get("task_id")
            ep.ids = list(tokenizer.apply_chat_template(ep.messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
            ep.sampled = [False] * len(ep.ids)
            ep.sampler_logp = [math.nan] * len(ep.ids)
            ep.prompt_tokens = len(ep.ids)
        except Exception as exc:  # noqa: BLE001 - any environment failure ends only this episode
            ep.error, ep.done = f"{type(exc).__name__}: {exc}", True

    turn = 0
    while True:
        live = [k for k, ep in enumerate(episodes) if not ep.done]
        if not live:
            break
        completions: list[Completion] = backend.generate(
            [episodes[k].ids for k in live], seed=_derive_seed(seed, "turn", turn), max_new_tokens=max_new_tokens
        )
        for k, completion in zip(live, completions):
            ep = episodes[k]
            ep.ids += completion.token_ids
            ep.sampled += [True] * len(completion.token_ids)
            ep.sampler_logp += completion.logprobs
            ep.turns += 1
            ep.completion_tokens += len(completion.token_ids)
            ep.longest_turn = max(ep.longest_turn, len(completion.token_ids))
            ep.truncated |= not completion.finished
            history = ep.messages + [{"role": "assistant", "content": completion.text}]
            try:
                obs, reward, terminated, truncated, info = envs[k].step(completion.text)
                ep.reward += float(reward)
                ep.messages = [dict(m) for m in obs]  # the whole conversation, this reply included
                if terminated or truncated:
                    ep.done = True
                    rubric = info.get("rubric") or {}
                    ep.criteria = {
                        name: c["score"]
                        for name, c in (rubric.get("criteria") or {}).items()
                        if c.get("score") is not None
                    }
                    continue
                new = ep.messages[len(history) :]  # the environment's messages after this reply
                last = completion.token_ids[-1] if completion.token_ids and completion.finished else None
                bridge = bridge_tokens(tokenizer, history, new, stop_text.get(last) if last is not None else None)
            except Exception as exc:  # noqa: BLE001
                ep.error, ep.done = f"{type(exc).__name__}: {exc}", True
                continue
            if len(ep.ids) + len(bridge) + max_new_tokens > max_episode_tokens:
                ep.truncated, ep.done = True, True  # no room for another turn
                continue
            ep.ids += bridge
            ep.sampled += [False] * len(bridge)
            ep.sampler_logp += [math.nan] * len(bridge)
        turn += 1

    for k, ep in enumerate(episodes):
        if envs[k] is not None:
            pool.release(ep.env_index, envs[k], broken=ep.error is not None)
    return episodes


# =============================================================================================
# Log-probabilities of the sampled tokens under the current policy
# =============================================================================================


def _pack(
    episodes: Sequence[Episode], pad_id: int, device: torch.device, *, train_mask: bool = False
) -> dict[str, torch.Tensor]:
    """Split each episode into its first prompt (the prefix, shared by a group) and the rest.

    prefix_ids [U, P]: the distinct first prompts, left-padded (all end at column P-1);
    index [B]: the prefix row of each episode; suffix_ids [B, S]: everything after the first
    prompt (sampled, environment and later prompt tokens), right-padded. Per-token tensors
    (sampled, loss_mask, sampler_logp) are [B, S] in the suffix layout.
    """
    unique: dict[tuple[int, ...], int] = {}
    index = [unique.setdefault(tuple(ep.ids[: ep.prompt_tokens]), len(unique)) for ep in episodes]
    prefixes = list(unique)
    p_width = max(len(p) for p in prefixes)
    prefix_ids = torch.full((len(prefixes), p_width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(prefixes), p_width), dtype=torch.long)
    for i, p in enumerate(prefixes):
        prefix_ids[i, p_width - len(p) :] = torch.tensor(p, dtype=torch.long)
        prefix_mask[i, p_width - len(p) :] = 1
    s_width = max(max(len(ep.ids) - ep.prompt_tokens for ep in episodes), 1)
    shape = (len(episodes), s_width)
    suffix_ids = torch.full(shape, pad_id, dtype=torch.long)
    suffix_mask = torch.zeros(shape, dtype=torch.long)
    sampled = torch.zeros(shape, dtype=torch.bool)
    loss_mask = torch.zeros(shape, dtype=torch.bool)
    sampler_logp = torch.zeros(shape)
    for i, ep in enumerate(episodes):
        n = len(ep.ids) - ep.prompt_tokens
        if n == 0:
            continue
        suffix_ids[i, :n] = torch.tensor(ep.ids[ep.prompt_tokens :], dtype=torch.long)
        suffix_mask[i, :n] = 1
        sampled[i, :n] = torch.tensor(ep.sampled[ep.prompt_tokens :])
        sampler_logp[i, :n] = torch.tensor(ep.sampler_logp[ep.prompt_tokens :]).nan_to_num(0.0)
        if train_mask:
            loss_mask[i, :n] = torch.tensor(ep.loss_sampled[ep.prompt_tokens :])  # type: ignore[attr-defined]
    prompt_lengths = torch.tensor([ep.prompt_tokens for ep in episodes])
    batch = {
        "prefix_ids": prefix_ids,
        "prefix_mask": prefix_mask,
        "prefix_positions": (prefix_mask.cumsum(-1) - 1).clamp(min=0),
        "index": torch.tensor(index),
        "suffix_ids": suffix_ids,
        "suffix_mask": suffix_mask,
        "suffix_positions": prompt_lengths.unsqueeze(-1) + torch.arange(s_width),  # [B, S]
        "sampled": sampled,
        "loss_mask": loss_mask,
        "sampler_logp": sampler_logp,
    }
    return {k: v.to(device) for k, v in batch.items()}


def sampled_logprobs(
    model: Any, batch: dict[str, torch.Tensor], temperature: float, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(token | everything before it) of every suffix token: (logp [B, S], sampled [B, S]).

    Two forward passes, one graph: the distinct prompts [U, P] run once and their KV cache is
    gathered to the B episodes (a group of G shares one prompt, so the prompt costs 1/G of a
    full-sequence forward, and its gradient accumulates from all G through the gather); then the
    suffixes [B, S] run on top of that cache. The vocabulary head runs on the last prompt
    position and on suffix positions only.
    """
    from transformers import DynamicCache

    cache = DynamicCache()  # filled in place by the prefix forward
    cache_arg = cache_kwarg(model)
    prefix = model(
        input_ids=batch["prefix_ids"],
        attention_mask=batch["prefix_mask"],
        position_ids=batch["prefix_positions"],
        use_cache=True,
        logits_to_keep=1,
        **{cache_arg: cache},
    )
    index = batch["index"]
    cache.batch_select_indices(index)  # differentiable gather: [U, ...] -> [B, ...]
    suffix = model(
        input_ids=batch["suffix_ids"],
        attention_mask=torch.cat([batch["prefix_mask"][index], batch["suffix_mask"]], dim=1),
        position_ids=batch["suffix_positions"],
        use_cache=True,
        **{cache_arg: cache},
    )
    # predictions of suffix token j: the prompt's last logits for j = 0, suffix logits j-1 after
    logits = torch.cat([prefix.logits[index][:, -1:], suffix.logits[:, :-1]], dim=1)  # [B, S, V]
    logp = token_logprobs(logits, batch["suffix_ids"], temperature, top_p)
    return logp, batch["sampled"]


# =============================================================================================
# Checkpoints and provenance
# =============================================================================================


def _latest_checkpoint(output_dir: Path) -> Path | None:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def _git_commit() -> dict[str, Any] | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", str(here)], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return {"commit": commit, "trainer_dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return None


def _model_provenance(config: TrainConfig, path: str) -> dict[str, Any]:
    info: dict[str, Any] = {"name": config.model or "default", "path": path}
    marker = Path(path) / "envhub-conversion.json"
    if marker.is_file():
        info.update(json.loads(marker.read_text()))
    return info


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


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


def _plan_groups(config: TrainConfig, step: int, round_: int, count: int, first_group: int) -> list[tuple[int, int, int]]:
    """(group, env_index, task_seed) for ``count`` new groups of ``group_size`` episodes."""
    rng = random.Random(_derive_seed(config.seed, "plan", step, round_))
    weights = [max(spec.weight, 0.0) for spec in config.envs]
    plan = []
    for g in range(first_group, first_group + count):
        env_index = rng.choices(range(len(config.envs)), weights=weights)[0]
        task_seed = rng.randrange(2**31)
        plan += [(g, env_index, task_seed)] * config.group_size
    return plan


def train(config: TrainConfig) -> TrainResult:
    """Train a LoRA adapter with ``config``; see the module docstring for the algorithm."""
    import peft

    from envhub.models.loading import load_policy, resolve_model

    _validate(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # --- model: base weights frozen, LoRA adapters trainable ---
    model_path = resolve_model(config.model)
    base, tokenizer = load_policy(model_path, device=config.device, dtype=config.dtype)
    device = next(base.parameters()).device
    torch.manual_seed(_derive_seed(config.seed, "lora-init"))
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
    warmup = max(config.warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warmup) if warmup else 1.0
    )

    # --- resume ---
    start_step = 0
    if not config.resume:  # a fresh run: stale checkpoints must not be taken for this run's
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    latest = _latest_checkpoint(out_dir) if config.resume else None
    if latest is not None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(latest / "adapter_model.safetensors")))
        state = torch.load(latest / "optimizer.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = json.loads((latest / "trainer_state.json").read_text())["step"]
    metrics_path = out_dir / "metrics.jsonl"
    history: list[dict[str, Any]] = []
    if metrics_path.exists():  # keep only the steps the checkpoint covers
        for line in metrics_path.read_text().splitlines():
            row = json.loads(line)
            if row["step"] <= start_step:
                history.append(row)
    with open(metrics_path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in history)

    backend = make_backend(
        config.backend,
        model,
        tokenizer,
        model_path=model_path,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        lora_rank=config.lora_r,
    )
    backend.update_weights(model)
    pool = EnvPool(config.envs)
    writer = None
    if config.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"))

    provenance: dict[str, Any] = {
        "trainer": "envhub.trainers.grpo",
        "algo": config.algo,
        "model": _model_provenance(config, model_path),
        "environments": [],
        "config": config_to_dict(config),
        "git": _git_commit(),
        "versions": _versions(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "resumed_from_step": start_step or None,
    }

    progress = _Progress(config.steps, start_step, enabled=config.progress)
    t_start = time.perf_counter()
    try:
        for step in range(start_step, config.steps):
            row = _train_step(config, step, model, tokenizer, backend, pool, optimizer, scheduler, params, device)
            history.append(row)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if writer is not None:
                for key, value in row.items():
                    if isinstance(value, (int, float)) and key != "step":
                        writer.add_scalar(key, value, row["step"])
            provenance["environments"] = [i for i in pool.identities if i is not None]
            out_of_time = config.max_train_seconds is not None and time.perf_counter() - t_start > config.max_train_seconds
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps or out_of_time:
                latest = _save_checkpoint(out_dir, step + 1, model, optimizer, scheduler, provenance)
            progress.update(row)
            if out_of_time:
                break
    finally:
        progress.close()
        pool.close()
        if writer is not None:
            writer.close()

    provenance["environments"] = [i for i in pool.identities if i is not None]
    provenance["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    provenance["final_metrics"] = history[-1] if history else None
    adapter_dir = out_dir / "adapter"
    if latest is not None:  # the checkpoint this run saved or resumed from last
        tmp = out_dir / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
            if (latest / name).exists():
                shutil.copy2(latest / name, tmp / name)
        _write_json_atomic(tmp / "provenance.json", provenance)
        shutil.rmtree(adapter_dir, ignore_errors=True)
        os.replace(tmp, adapter_dir)
    _write_json_atomic(out_dir / "provenance.json", provenance)
    return TrainResult(adapter_dir=adapter_dir, output_dir=out_dir, metrics=history, provenance=provenance)


def _train_step(
    config: TrainConfig,
    step: int,
    model: Any,
    tokenizer: Any,
    backend: Backend,
    pool: EnvPool,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    params: list[torch.nn.Parameter],
    device: torch.device,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    # Everything random in a step derives from (seed, step): a resumed run replays it exactly.
    torch.manual_seed(_derive_seed(config.seed, "step", step))

    # ---- 1-3. rollouts, shaped rewards, dynamic sampling -------------------------------------
    kept: list[list[Episode]] = []  # groups with signal, each a list of G episodes
    generated: list[Episode] = []
    dropped_groups = 0
    rounds = 0
    next_group = 0
    while len(kept) < config.prompts_per_step and rounds < max(config.max_sampling_rounds, 1):
        # Every round samples a whole batch of groups, refills too (over-sampling, as DAPO's own
        # implementation does): a batched rollout of P groups costs little more than of a few, and
        # fewer steps end with too few groups. The first groups with signal are kept.
        count = config.prompts_per_step
        plan = _plan_groups(config, step, rounds, count, next_group)
        next_group += count
        episodes = rollout(
            backend,
            tokenizer,
            pool,
            plan,
            split=config.split,
            max_new_tokens=config.max_new_tokens,
            max_episode_tokens=config.max_episode_tokens,
            seed=_derive_seed(config.seed, "sample", step, rounds),
        )
        rounds += 1
        generated += episodes
        by_group: dict[int, list[Episode]] = {}
        for ep in episodes:
            if ep.error is not None:
                continue  # failed episodes are dropped and counted (episodes/errors)
            ep.shaped_reward = ep.reward
            if config.overlong_shaping:
                ep.shaped_reward += overlong_penalty(
                    ep.longest_turn, config.max_new_tokens, config.overlong_buffer, config.overlong_penalty_factor
                )
            by_group.setdefault(ep.group, []).append(ep)
        for members in by_group.values():
            if len(members) < 2:
                dropped_groups += 1
                continue
            rewards = [ep.shaped_reward for ep in members]
            if config.dynamic_sampling and max(rewards) - min(rewards) < 1e-9:
                dropped_groups += 1  # all equal: zero advantage everywhere, no signal
                continue
            kept.append(members)
        if not config.dynamic_sampling:
            break
    kept = kept[: config.prompts_per_step]
    t_rollout = time.perf_counter() - t0

    # ---- 4. advantages ---------------------------------------------------------------------
    batch = [ep for members in kept for ep in members]
    row: dict[str, Any] = {"step": step + 1}
    if batch:
        adv = group_advantages(
            torch.tensor([ep.shaped_reward for ep in batch]),
            torch.tensor([ep.group for ep in batch]),
            config.advantage_norm,
        )
    # ---- 5. policy update ------------------------------------------------------------------
    t1 = time.perf_counter()
    train_stats = _update(config, step, model, tokenizer, batch, adv if batch else None, optimizer, scheduler, params, device)
    if batch:
        backend.update_weights(model)
    t_train = time.perf_counter() - t1
    step_s = time.perf_counter() - t0

    # ---- 6. metrics ------------------------------------------------------------------------
    ok = [ep for ep in generated if ep.error is None]
    tokens = sum(len(ep.ids) for ep in generated if ep.ids)
    row.update(
        {
            "reward/mean": _mean([ep.reward for ep in ok]),
            "reward/std": _std([ep.reward for ep in ok]),
            "reward/shaped_mean": _mean([ep.shaped_reward for ep in ok]),
            "reward/trained_mean": _mean([ep.reward for ep in batch]),
        }
    )
    criteria = sorted({name for ep in ok for name in ep.criteria})
    for name in criteria:
        row[f"reward/criterion/{name}"] = _mean([ep.criteria[name] for ep in ok if name in ep.criteria])
    row.update(train_stats)
    row.update(
        {
            "adv/abs_mean": float(adv.abs().mean()) if batch else 0.0,
            "episodes/count": len(generated),
            "episodes/errors": sum(ep.error is not None for ep in generated),
            "episodes/trained": len(batch),
            "episodes/truncated_frac": _mean([float(ep.truncated) for ep in ok]),
            "episodes/turns_mean": _mean([ep.turns for ep in ok]),
            "groups/kept": len(kept),
            "groups/dropped": dropped_groups,
            "sampling/rounds": rounds,
            "completion/len_mean": _mean([ep.completion_tokens for ep in ok]),
            "perf/rollout_s": t_rollout,
            "perf/train_s": t_train,
            "perf/step_s": step_s,
            "perf/tokens_per_s": tokens / step_s,  # verl: (prompt + completion tokens) / step time
            "perf/completions_per_s": len(generated) / step_s,
            "lr": scheduler.get_last_lr()[0],
        }
    )
    errors = [ep.error for ep in generated if ep.error]
    if errors:
        row["episodes/first_error"] = errors[0][:300]
    return row


def _update(
    config: TrainConfig,
    step: int,
    model: Any,
    tokenizer: Any,
    batch: list[Episode],
    adv: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    params: list[torch.nn.Parameter],
    device: torch.device,
) -> dict[str, float]:
    """Optimizer step(s) on the batch; returns loss/clip/kl/grad statistics."""
    stats = {"loss/policy": 0.0, "clip/frac": 0.0, "ratio/mean": 1.0, "ratio/max": 1.0, "grad/norm": 0.0}
    if config.beta:
        stats["kl/mean"] = 0.0
    if not batch:
        return stats
    pad_id = tokenizer.pad_token_id
    for i, ep in enumerate(batch):
        ep.advantage = float(adv[i])  # type: ignore[attr-defined]
        if config.mask_truncated and ep.truncated:
            ep.loss_sampled = [False] * len(ep.sampled)  # type: ignore[attr-defined]
        else:
            ep.loss_sampled = ep.sampled  # type: ignore[attr-defined]
    rng = random.Random(_derive_seed(config.seed, "shuffle", step))
    order = list(range(len(batch)))  # episodes, kept in rollout order
    updates = config.minibatches * config.epochs_per_batch
    mode = config.old_logprobs
    if mode == "auto":
        mode = "current" if updates == 1 else "recompute"
    if mode == "sampler" and config.backend != "transformers":
        mode = "recompute"

    def micro_batches(indices: list[int]) -> Iterable[tuple[list[int], dict[str, torch.Tensor]]]:
        # whole groups together, so each micro-batch computes a group's shared prompt once
        indices = sorted(indices, key=lambda i: (batch[i].group, i))
        for start in range(0, len(indices), config.micro_batch_size):
            chunk = indices[start : start + config.micro_batch_size]
            eps = [batch[i] for i in chunk]
            packed = _pack(eps, pad_id, device, train_mask=True)
            packed["adv"] = torch.tensor([ep.advantage for ep in eps], device=device)
            yield chunk, packed

    def per_episode(chunk: list[int], values: torch.Tensor, store: dict[int, torch.Tensor]) -> None:
        for j, i in enumerate(chunk):
            store[i] = values[j, : len(batch[i].ids) - batch[i].prompt_tokens]

    def gather(chunk: list[int], store: dict[int, torch.Tensor], width: int) -> torch.Tensor:
        rows = [torch.nn.functional.pad(store[i], (0, width - store[i].shape[0])) for i in chunk]
        return torch.stack(rows)

    old: dict[int, torch.Tensor] = {}
    ref: dict[int, torch.Tensor] = {}
    if mode == "recompute" or config.beta:
        model.eval()
        with torch.no_grad():
            for chunk, packed in micro_batches(order):
                if mode == "recompute":
                    per_episode(chunk, sampled_logprobs(model, packed, config.temperature, config.top_p)[0], old)
                if config.beta:
                    with model.disable_adapter():  # pi_ref: the base model, no second copy
                        per_episode(chunk, sampled_logprobs(model, packed, config.temperature, config.top_p)[0], ref)
    model.train()

    groups = sorted({ep.group for ep in batch})
    totals = {"loss": 0.0, "tokens": 0.0, "clipped": 0.0, "ratio_sum": 0.0, "ratio_max": 0.0, "kl_sum": 0.0, "grad": 0.0}
    n_updates = 0
    for _epoch in range(config.epochs_per_batch):
        rng.shuffle(groups)
        for m in range(config.minibatches):
            chosen = set(groups[m :: config.minibatches])  # minibatches of whole groups
            mb = [i for i in order if batch[i].group in chosen]
            if not mb:
                continue
            n_tokens = sum(sum(batch[i].loss_sampled) for i in mb)  # type: ignore[attr-defined]
            optimizer.zero_grad(set_to_none=True)
            for chunk, packed in micro_batches(mb):
                logp, _sampled = sampled_logprobs(model, packed, config.temperature, config.top_p)
                width = logp.shape[1]
                mask = packed["loss_mask"]
                if mode == "current":
                    old_logp = logp.detach()
                elif mode == "sampler":
                    old_logp = packed["sampler_logp"]
                else:
                    old_logp = gather(chunk, old, width)
                ref_logp = gather(chunk, ref, width) if config.beta else None
                out = policy_loss(
                    config.algo,
                    logp,
                    old_logp,
                    packed["adv"],
                    mask,
                    epsilon_low=config.epsilon_low,
                    epsilon_high=config.epsilon_high,
                    cispo_max_ratio=config.cispo_max_ratio,
                    cispo_min_ratio=config.cispo_min_ratio,
                    ref_logp=ref_logp,
                    beta=config.beta,
                    num_sequences=len(mb),
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
    tokens = max(totals["tokens"], 1.0)
    stats.update(
        {
            "loss/policy": totals["loss"] / max(n_updates, 1),
            "clip/frac": totals["clipped"] / tokens,
            "ratio/mean": totals["ratio_sum"] / tokens,
            "ratio/max": totals["ratio_max"],
            "grad/norm": totals["grad"] / max(n_updates, 1),
            "tokens/trained": totals["tokens"] / max(config.epochs_per_batch, 1),
        }
    )
    if config.beta:
        stats["kl/mean"] = totals["kl_sum"] / tokens
    return stats


def _save_checkpoint(
    out_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any, provenance: dict[str, Any]
) -> Path:
    """checkpoints/step-NNNNNN/: peft adapter, optimizer state, trainer_state.json, provenance.
    Written to a temporary folder and renamed, so a crash never leaves a half checkpoint."""
    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    _write_json_atomic(tmp / "provenance.json", provenance)
    _write_json_atomic(tmp / "trainer_state.json", {"step": step})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def _versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("transformers", "peft", "envhub"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    return versions


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _std(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    m = _mean(values)
    return float(math.sqrt(sum((v - m) ** 2 for v in values) / len(values)))


class _Progress:
    """A rich progress bar showing the latest reward; silent when disabled."""

    def __init__(self, total: int, start: int, *, enabled: bool):
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def update(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            info = f"reward {row['reward/mean']:.3f}  loss {row['loss/policy']:+.4f}  {row['perf/step_s']:.1f}s/step"
            self.bar.update(self.task, advance=1, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


#: Settings for a few minutes of CPU training on arithmetic (easy): small groups, short answers.
DEMO_SETTINGS: dict[str, Any] = {
    "prompts_per_step": 4,
    "group_size": 8,
    "max_new_tokens": 48,
    "overlong_buffer": 16,
    "temperature": 1.0,
    "learning_rate": 7e-4,
    "minibatches": 2,
    "old_logprobs": "sampler",
    "checkpoint_every": 5,
    "steps": 10_000,
}


def demo(minutes: float = 5.0, *, output_dir: str = "runs/demo-cispo", **overrides: Any) -> TrainResult:
    """Train CISPO on ``arithmetic`` (easy) for ``minutes`` of wall clock and return the result
    (``result.adapter_dir`` is the peft adapter). Runs on CPU with the embedded default model."""
    config = make_config(
        "cispo",
        envs=["arithmetic?level=easy"],
        overrides={**DEMO_SETTINGS, "output_dir": output_dir, "max_train_seconds": minutes * 60, "resume": False, **overrides},
    )
    return train(config)


def evaluate(
    model: Any,
    tokenizer: Any,
    env: EnvSpec | str,
    *,
    episodes: int = 200,
    split: str = "test",
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    seed: int = 12345,
    batch_size: int = 100,
) -> list[Episode]:
    """Run ``episodes`` independent episodes of ``env`` (greedy by default) and return them.

    Task seeds are fixed by ``seed``, so two models evaluated with the same arguments see the
    same tasks (a paired comparison). Episodes that error keep ``error`` set.
    """
    spec = env if isinstance(env, EnvSpec) else EnvSpec.parse(env)
    pool = EnvPool([spec])
    rng = random.Random(seed)
    plan = [(i, 0, rng.randrange(2**31)) for i in range(episodes)]
    backend = make_backend("transformers", model, tokenizer, model_path="", temperature=temperature, max_new_tokens=max_new_tokens)
    results: list[Episode] = []
    try:
        for start in range(0, len(plan), batch_size):
            results += rollout(
                backend,
                tokenizer,
                pool,
                plan[start : start + batch_size],
                split=split,
                max_new_tokens=max_new_tokens,
                max_episode_tokens=1 << 30,
                seed=_derive_seed(seed, start),
            )
    finally:
        pool.close()
    return results


# =============================================================================================
# Command line: envhub train ENV... --algo grpo|dapo|cispo [--config FILE] [--key value ...]
# =============================================================================================


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse ``ENV... [--algo A] [--config FILE] [--<field> VALUE ...]`` into a TrainConfig.

    Any TrainConfig field is an option (``--group-size 8`` or ``--group_size=8``); booleans also
    take ``--no-<field>``; lists are comma-separated. ENV may carry factory arguments and a
    weight: ``arithmetic?level=easy*2``.
    """
    parser = argparse.ArgumentParser(prog="envhub train", description=parse_args.__doc__)
    parser.add_argument("envs", nargs="*", help="environments (bundled name, folder or ns/name@version)")
    parser.add_argument("--algo", choices=sorted(ALGO_PRESETS), default=None)
    parser.add_argument("--config", dest="config_file", default=None, help="TOML file of TrainConfig fields")
    parser.add_argument("--env-kwargs", default=None, help="factory arguments for every env: key=value,key=value")
    argv = list(sys.argv[1:] if argv is None else argv)
    own = {"--algo", "--config", "--env-kwargs"}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides: dict[str, Any] = {}
    passed: list[str] = []  # what argparse sees: positionals and its own options
    i = 0
    while i < len(argv):
        token = argv[i]
        key, eq, value = token[2:].partition("=")
        if not token.startswith("--") or token.split("=")[0] in own:
            passed.append(token)
            if token in own and i + 1 < len(argv):
                passed.append(argv[i + 1])
                i += 1
            i += 1
            continue
        key = key.replace("-", "_")
        if key.startswith("no_") and key[3:] in names and not eq:
            overrides[key[3:]] = False
            i += 1
            continue
        if key not in names:
            if token in ("--help",):
                passed.append(token)
                i += 1
                continue
            parser.error(f"unknown option --{key.replace('_', '-')}")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            elif isinstance(getattr(TrainConfig(), key), bool):
                value = "true"
            else:
                parser.error(f"--{key.replace('_', '-')} needs a value")
        overrides[key] = value
        i += 1
    args = parser.parse_args(passed)
    algo = args.algo
    if algo is None and args.config_file:
        import tomllib

        with open(args.config_file, "rb") as f:
            data = tomllib.load(f)
        algo = data.get("train", data).get("algo")
    envs = [EnvSpec.parse(e) for e in args.envs] or None
    if envs and args.env_kwargs:
        extra = {k: _coerce_scalar(v) for k, _, v in (p.partition("=") for p in args.env_kwargs.split(",") if p)}
        for spec in envs:
            spec.kwargs = {**extra, **spec.kwargs}
    return make_config(algo or "cispo", envs=envs, config_file=args.config_file, overrides=overrides)


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``envhub train``: parse, train, print where the adapter is. Returns 0."""
    config = parse_args(argv)
    result = train(config)
    last = result.metrics[-1] if result.metrics else {}
    print(f"adapter: {result.adapter_dir}")
    if last:
        print(f"step {last['step']}: reward/mean {last['reward/mean']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main())
