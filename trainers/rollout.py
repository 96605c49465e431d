"""Rollouts: episodes through the Env contract, token by token, and their log-probabilities.

A :class:`Rollout` is one episode as the trainer sees it: the token ids the loss reads (prompt,
sampled and environment tokens, in order), which of them the policy sampled, and the episode's
reward. :func:`rollout` runs a batch of episodes in lockstep through environments made by
``envhub.make`` (any runtime, any number of turns); :func:`pack` lays a batch out as tensors and
:func:`sampled_logprobs` scores the sampled tokens under the current policy.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from envhub.identity.manifest import reply_stops
from envhub.models.decoding import prefill_head, prompt_layout
from envhub.runtime.env_pool import EnvPool
from trainers.config import EnvSpec
from trainers.generation import Backend, Completion, cache_kwarg, make_backend, token_logprobs

__all__ = [
    "Rollout",
    "bridge_tokens",
    "derive_seed",
    "heldout_rollouts",
    "micro_batches",
    "pack",
    "pad_rows",
    "rollout",
    "sampled_logprobs",
    "split_rows",
]


@dataclass
class Rollout:
    """One episode: its full token sequence, which tokens the policy sampled, and its rewards."""

    group: int
    """The group (one task, G episodes) it belongs to; advantages are relative within a group."""
    env_index: int
    """Which environment of the mix (an index into ``TrainConfig.envs``)."""
    task_seed: int
    """The seed the environment was reset with: the same seed, the same task."""
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
    step_rewards: list[float] = field(default_factory=list)
    """Each step's reward, in order."""
    criteria: dict[str, float] = field(default_factory=dict)
    """The rubric's score per criterion, from the last step's ``info["rubric"]``."""
    rubric: dict[str, Any] | None = None
    """The last step's ``info["rubric"]`` whole (every criterion's score, weight and reason; the hash)."""
    task_id: str | None = None
    turns: int = 0
    prompt_tokens: int = 0
    """Length of the first prompt: the prefix a group's episodes share."""
    completion_tokens: int = 0
    longest_turn: int = 0
    """The longest single completion (tokens): what DAPO's overlong shaping looks at."""
    truncated: bool = False
    """A completion hit max_new_tokens (or the episode hit max_episode_tokens)."""
    done: bool = False
    error: str | None = None
    """Why the episode ended early (an environment failure); such an episode is not trained on."""

    # --- set by the trainer after the rollout ---
    judge_score: float | None = None
    """The group judge's score, when the run has one (TrainConfig.judge_prompt)."""
    shaped_reward: float = 0.0
    """reward plus any shaping (overlong penalty, group judge): what advantages are computed from."""
    advantage: float = 0.0
    """A_i, broadcast to each of the episode's loss tokens."""
    loss_sampled: list[bool] = field(default_factory=list)
    """The sampled tokens that carry loss: ``sampled``, or none of them when DAPO masks a truncated episode."""
    trained: bool = False
    """It was in the step's training batch (its group was kept)."""


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


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def rollout(
    backend: Backend,
    tokenizer: Any,
    pools: Sequence[EnvPool],
    plan: Sequence[tuple[int, int, int]],
    *,
    split: str,
    max_new_tokens: int,
    max_episode_tokens: int,
    seed: int,
    on_progress: Callable[[int, int], None] | None = None,
    env_stops: bool = True,
) -> list[Rollout]:
    """Run one episode per ``(group, env_index, task_seed)`` of ``plan``, all turns in lockstep.

    ``pools[env_index]`` lends the environment instance. Every turn, the prompts of all live
    episodes go to the backend as one batch (identical prompts, i.e. a group's first turn, are
    prefilled once). A reply ends at its environment's stop strings unless ``env_stops`` is false.
    An exception from the environment ends that episode with ``error`` set; it never propagates.
    ``on_progress(done, total)`` is called as episodes finish (after each turn).
    """
    episodes = [Rollout(group=g, env_index=e, task_seed=s) for g, e, s in plan]
    envs: list[Any] = [None] * len(episodes)
    stop_text = {i: tokenizer.decode([i]) for i in getattr(backend, "stop_ids", [])}
    for k, ep in enumerate(episodes):
        try:
            envs[k] = pools[ep.env_index].take()
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
        if on_progress is not None:
            on_progress(len(episodes) - len(live), len(episodes))
        if not live:
            break
        completions: list[Completion] = backend.generate(
            [episodes[k].ids for k in live],
            seed=derive_seed(seed, "turn", turn),
            max_new_tokens=max_new_tokens,
            stop=[reply_stops(envs[k]) for k in live] if env_stops else None,
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
                ep.step_rewards.append(float(reward))
                ep.messages = [dict(m) for m in obs]  # the whole conversation, this reply included
                if terminated or truncated:
                    ep.done = True
                    rubric = info.get("rubric") or {}
                    ep.rubric = dict(rubric) if rubric else None
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
        if envs[k] is None:
            continue
        if ep.error is None:
            pools[ep.env_index].give(envs[k])
        else:
            pools[ep.env_index].discard(envs[k])  # its state is unknown: never reuse it
    return episodes


def heldout_rollouts(
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
) -> list[Rollout]:
    """Run ``episodes`` independent episodes of ``env`` (greedy by default) and return them.

    For measuring a policy on held-out tasks from inside a training script (``envhub eval`` is the
    full harness). Task seeds are fixed by ``seed``, so two models run with the same arguments see
    the same tasks (a paired comparison). Episodes that error keep ``error`` set.
    """
    spec = env if isinstance(env, EnvSpec) else EnvSpec.parse(env)
    pool = EnvPool(spec.name, runtime=spec.runtime, kwargs=spec.kwargs)
    rng = random.Random(seed)
    plan = [(i, 0, rng.randrange(2**31)) for i in range(episodes)]
    backend = make_backend("transformers", model, tokenizer, model_path="", temperature=temperature, max_new_tokens=max_new_tokens)
    results: list[Rollout] = []
    try:
        for start in range(0, len(plan), batch_size):
            results += rollout(
                backend,
                tokenizer,
                [pool],
                plan[start : start + batch_size],
                split=split,
                max_new_tokens=max_new_tokens,
                max_episode_tokens=1 << 30,
                seed=derive_seed(seed, start),
            )
    finally:
        pool.close()
    return results


# ---------------------------------------------------------------------------------------------
# Log-probabilities of the sampled tokens under the current policy
# ---------------------------------------------------------------------------------------------


def pack(
    episodes: Sequence[Rollout], pad_id: int, device: torch.device, *, train_mask: bool = False, share_head: bool = True
) -> dict[str, torch.Tensor]:
    """Split each episode into its first prompt (the prefix, shared by a group) and the rest.

    head_ids [1, C]: the tokens every distinct first prompt starts with (a chat template's system
    prompt, an environment's instructions; C is 0 when they share too few, see
    :func:`~envhub.models.decoding.common_prefix_length`); prefix_ids [U, P]: the rest of each
    distinct first prompt, left-padded (all end at column P-1); prefix_mask [U, C + P] covers both;
    index [B]: the prefix row of each episode; suffix_ids [B, S]: everything after the first
    prompt (sampled, environment and later prompt tokens), right-padded. Per-token tensors
    (sampled, loss_mask, sampler_logp) are [B, S] in the suffix layout; loss_mask is filled from
    ``loss_sampled`` when ``train_mask``. ``share_head`` False (a model with sliding-window layers:
    :func:`~envhub.models.decoding.layout_support`) keeps C at 0.
    """
    unique: dict[tuple[int, ...], int] = {}
    index = [unique.setdefault(tuple(ep.ids[: ep.prompt_tokens]), len(unique)) for ep in episodes]
    prefixes = list(unique)
    layout = prompt_layout(prefixes, pad_id, share_head=share_head)
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
            loss_mask[i, :n] = torch.tensor(ep.loss_sampled[ep.prompt_tokens :])
    prompt_lengths = torch.tensor([ep.prompt_tokens for ep in episodes])
    batch = {
        "head_ids": layout["head_ids"],
        "prefix_ids": layout["tail_ids"],
        "prefix_mask": layout["mask"],
        "prefix_positions": layout["positions"],
        "index": torch.tensor(index),
        "suffix_ids": suffix_ids,
        "suffix_mask": suffix_mask,
        "suffix_positions": prompt_lengths.unsqueeze(-1) + torch.arange(s_width),  # [B, S]
        "sampled": sampled,
        "loss_mask": loss_mask,
        "sampler_logp": sampler_logp,
    }
    return {k: v.to(device) for k, v in batch.items()}


def micro_batches(
    rollouts: Sequence[Rollout],
    indices: Sequence[int],
    *,
    size: int,
    pad_id: int,
    device: torch.device,
    max_tokens: int | None = None,
    share_head: bool = True,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """``rollouts[indices]`` packed (with their loss mask and ``adv`` [B]) at most ``size`` and
    ``max_tokens`` padded tokens at a time, yielded with the indices of each chunk. A group's
    rollouts go together where they fit, so that a micro-batch computes a group's shared prompt once."""
    ordered = sorted(indices, key=lambda i: (rollouts[i].group, i))
    for chunk in _chunks(ordered, [len(rollouts[i].ids) for i in ordered], size, max_tokens):
        members = [rollouts[i] for i in chunk]
        packed = pack(members, pad_id, device, train_mask=True, share_head=share_head)
        packed["adv"] = torch.tensor([r.advantage for r in members], device=device)
        yield chunk, packed


def _chunks(items: list[int], lengths: list[int], size: int, max_tokens: int | None) -> Iterator[list[int]]:
    """Consecutive runs of ``items``: at most ``size`` long, and (padded to their longest) at most
    ``max_tokens`` tokens, except an item longer than that, which goes alone."""
    chunk: list[int] = []
    longest = 0
    for item, n in zip(items, lengths):
        wider = max(longest, n)
        if chunk and (len(chunk) == size or (max_tokens is not None and wider * (len(chunk) + 1) > max_tokens)):
            yield chunk
            chunk, wider = [], n
        chunk.append(item)
        longest = wider
    if chunk:
        yield chunk


def split_rows(values: torch.Tensor, chunk: Sequence[int], rollouts: Sequence[Rollout]) -> dict[int, torch.Tensor]:
    """Per-token values [B, S] of a micro-batch -> one unpadded row per rollout index of ``chunk``."""
    return {i: values[j, : len(rollouts[i].ids) - rollouts[i].prompt_tokens] for j, i in enumerate(chunk)}


def pad_rows(rows: dict[int, torch.Tensor], chunk: Sequence[int], width: int) -> torch.Tensor:
    """The rows of ``chunk``'s rollouts, right-padded with zeros to ``width``: [B, width]."""
    return torch.stack([torch.nn.functional.pad(rows[i], (0, width - rows[i].shape[0])) for i in chunk])


def sampled_logprobs(
    model: Any, batch: dict[str, torch.Tensor], temperature: float, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(token | everything before it) of every sampled suffix token: (logp [B, S], sampled
    [B, S]); logp is 0 at the tokens the model did not sample (environment and tool messages).

    Up to three forward passes, one graph: the head common to all prompts [1, C] runs once and its
    KV cache is gathered to the U distinct prompts, whose rest [U, P] runs once, its cache gathered
    in turn to the B episodes (a group of G shares one prompt, so the prompt costs 1/G of a
    full-sequence forward, and its gradient accumulates from all G through the gathers); then the
    suffixes [B, S] run on top of that cache. The vocabulary head runs only where a sampled token
    is predicted: a multi-turn episode's suffix is mostly the environment's text, and [B, S, V]
    logits over all of it are kept for backward (16 guess-number episodes of 900 tokens: 2.8 GB
    of float32 logits alone).
    """
    from transformers import DynamicCache

    decoder, head = _decoder_and_head(model)
    cache = DynamicCache()  # filled in place by the prefix forward
    cache_arg = cache_kwarg(decoder)
    prefill_head(decoder, batch["head_ids"], batch["prefix_ids"].shape[0], cache, cache_arg)
    prefix = decoder(
        input_ids=batch["prefix_ids"],
        attention_mask=batch["prefix_mask"],
        position_ids=batch["prefix_positions"],
        use_cache=True,
        **{cache_arg: cache},
    ).last_hidden_state
    index = batch["index"]
    cache.batch_select_indices(index)  # differentiable gather: [U, ...] -> [B, ...]
    suffix = decoder(
        input_ids=batch["suffix_ids"],
        attention_mask=torch.cat([batch["prefix_mask"][index], batch["suffix_mask"]], dim=1),
        position_ids=batch["suffix_positions"],
        use_cache=True,
        **{cache_arg: cache},
    ).last_hidden_state
    # the state that predicts suffix token j: the prompt's last for j = 0, the suffix's j-1 after
    before = torch.cat([prefix[index][:, -1:], suffix[:, :-1]], dim=1)  # [B, S, H]
    sampled = batch["sampled"]
    picked = token_logprobs(head(before[sampled]), batch["suffix_ids"][sampled], temperature, top_p)
    logp = torch.zeros(sampled.shape, dtype=picked.dtype, device=picked.device).masked_scatter(sampled, picked)
    return logp, sampled


def _decoder_and_head(model: Any) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor]]:
    """A causal LM's transformer body (through a peft wrapper: its LoRA layers live inside the body,
    so calling the body trains them) and its vocabulary head as a function of [N, H] states."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), functools.partial(_logits, base.get_output_embeddings(), base.config)


def _logits(head: Any, config: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The head on [N, H] states, with the final-logit transforms some model families apply in
    their forward after it (Gemma's soft-capping, Granite's scaling)."""
    logits = head(hidden)
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
