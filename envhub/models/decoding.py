"""Batched decoding over the KV cache, and the sampling distribution it draws from.

One loop serves the trainer's sampler (trainers/generation.py) and local evaluation
(envhub/evaluation/local_model.py). What makes it faster than ``model.generate`` on a CPU:

- **Shared prompts are prefilled once.** Identical prompts (a GRPO group's G members) share one
  cache row; the common head of distinct prompts (a chat template's system prompt and an
  environment's instructions) is prefilled once for all of them. Prefill dominated the main job's
  evaluation: 64 arithmetic prompts of 97 tokens, 85 of them common, took 10 s to prefill whole
  and 1.7 s with the common head shared.
- **Finished rows leave the batch**, so late decoding steps run on the rows still generating.
  A row finishes at a stop token, or at the token that completes one of its stop strings
  (:class:`StopStrings`, an environment's ``[generation] stop``).

Both hold for any attention cache. The shared head needs every layer to attend over its whole
cache: a sliding window counts cache slots, and the padding between the head and a shorter
prompt's tail would narrow it, so models with sliding or chunked layers (Mistral, Gemma 2 and 3)
prefill each prompt whole, left-padded (:func:`layout_support`). Models whose layers keep a
recurrent state (linear attention, convolutions) cannot have rows of their cache copied or dropped;
:func:`decode` refuses them with :class:`UnsupportedModelError`.

The distribution is softmax(logits / temperature) restricted to its top-p nucleus;
:func:`token_logprobs` scores tokens under the same definition, so a trainer's loss uses the
probabilities the tokens were drawn with.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from envhub.errors import UnsupportedModelError

__all__ = [
    "MIN_SHARED_TOKENS",
    "Decoded",
    "LayoutSupport",
    "StopStrings",
    "cache_kwarg",
    "common_prefix_length",
    "decode",
    "layout_support",
    "new_cache",
    "prefill_head",
    "prompt_layout",
    "processed_logprobs",
    "require_row_selection",
    "token_logprobs",
]

#: A common head shorter than this is prefilled with each prompt: an extra forward costs more.
MIN_SHARED_TOKENS = 16


@dataclass(frozen=True)
class LayoutSupport:
    """What a model's cache allows (:func:`layout_support`)."""

    share_head: bool
    """Every layer attends over its whole cache, so a common head can be prefilled once."""
    select_rows: bool
    """Rows of its cache can be copied and dropped (attention layers only, no recurrent state)."""
    layer_kinds: tuple[str, ...]
    """The distinct cache layer kinds, for error messages."""


def new_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` with a layer per kind of ``model``'s layers, as ``generate``
    builds it (a sliding-window layer keeps only its window); a uniform one before transformers 5."""
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    try:
        return DynamicCache(config=config) if config is not None else DynamicCache()
    except TypeError:  # transformers 4: no per-layer kinds
        return DynamicCache()


def layout_support(model: Any) -> LayoutSupport:
    """How ``model``'s prompts may be laid out (see the module's docstring)."""
    cache = new_cache(model)
    layers = getattr(cache, "layers", None)
    if not layers:  # transformers 4: the config says whether attention is windowed
        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        windowed = getattr(text, "sliding_window", None) is not None or getattr(text, "attention_chunk_size", None) is not None
        if windowed and getattr(text, "use_sliding_window", True) is False:
            windowed = False  # Qwen2 keeps a window size it does not use
        return LayoutSupport(share_head=not windowed, select_rows=True, layer_kinds=("DynamicLayer",))
    from transformers import cache_utils

    full = tuple(getattr(cache_utils, n) for n in ("DynamicLayer", "DummyLayer") if hasattr(cache_utils, n))
    recurrent = getattr(cache_utils, "LinearAttentionCacheLayerMixin", ())
    kinds = tuple(sorted({type(layer).__name__ for layer in layers}))
    return LayoutSupport(
        share_head=all(type(layer) in full for layer in layers),
        select_rows=not any(recurrent and isinstance(layer, recurrent) for layer in layers),
        layer_kinds=kinds,
    )


def require_row_selection(model: Any) -> LayoutSupport:
    """``model``'s :class:`LayoutSupport`; :class:`UnsupportedModelError` where rows of its cache
    cannot be copied or dropped, which batched decoding and the trainer's loss forward both do."""
    support = layout_support(model)
    if not support.select_rows:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        raise UnsupportedModelError(
            type(base).__name__, f"its cache keeps a recurrent state ({', '.join(support.layer_kinds)}), whose rows cannot be copied or dropped"
        )
    return support


@dataclass
class Decoded:
    """One prompt's decoded tokens."""

    token_ids: list[int]
    """The new ids, the stop token included when one was reached."""
    logprobs: list[float]
    """Each id's log-probability under the sampling distribution (0 when greedy)."""
    finished: bool
    """A stop token or a stop string ended it (False: it reached the length limit)."""


class StopStrings:
    """Says when a row's reply has reached one of its stop strings: ``check(row, ids)`` is True once
    the text of ``ids`` (the row's new tokens) contains one of ``stops[row]``.

    Called after every token, so only the newest tokens are decoded: a string of n characters that
    was not in the text one token ago ends within the last n + 1 tokens (a token is at least one
    character, and one more covers a tokenizer that joins a leading space on the boundary)."""

    def __init__(self, tokenizer: Any, stops: Sequence[Sequence[str]]) -> None:
        self.tokenizer = tokenizer
        self.stops = [tuple(s for s in row if s) for row in stops]
        self._window = [max((len(s) for s in row), default=0) + 1 for row in self.stops]

    def __bool__(self) -> bool:
        return any(self.stops)

    def check(self, row: int, ids: Sequence[int]) -> bool:
        if not self.stops[row]:
            return False
        tail = self.tokenizer.decode(list(ids[-self._window[row] :]), skip_special_tokens=True)
        return any(s in tail for s in self.stops[row])


def _nucleus_mask(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean mask [..., V] of the top-p nucleus of softmax(scaled): the smallest set of most
    likely tokens whose mass reaches top_p (always at least the most likely token)."""
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
    keep_sorted = mass_before < top_p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def processed_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """log-probabilities [..., V] of the sampling distribution: softmax(logits / T) restricted to
    its top-p nucleus and renormalised (tokens outside the nucleus get -inf)."""
    scaled = logits.float() / temperature
    if top_p < 1.0:
        scaled = scaled.masked_fill(~_nucleus_mask(scaled, top_p), float("-inf"))
    return scaled.log_softmax(dim=-1)


def token_logprobs(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float, top_p: float
) -> torch.Tensor:
    """log pi(ids | ...) under the sampling distribution, differentiable in ``logits``.

    logits: [..., V]; ids: [...] -> [...]. Computed as logit - logsumexp (no [..., V] log-softmax
    kept for backward). With top_p < 1 the nucleus is taken from the current logits (a
    non-differentiable selection) and always contains ``ids`` itself, so a token the sampler drew
    never gets probability 0 after the policy has moved.
    """
    scaled = logits.float() / temperature
    if top_p < 1.0:
        with torch.no_grad():
            keep = _nucleus_mask(scaled, top_p)
            keep.scatter_(-1, ids.unsqueeze(-1), True)
        scaled = scaled.masked_fill(~keep, float("-inf"))
    picked = scaled.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return picked - scaled.logsumexp(dim=-1)


def cache_kwarg(model: Any) -> str:
    """The keyword under which ``model``'s forward takes a KV cache object.

    transformers 5 names it ``cache`` (``past_key_values`` still works there, with a deprecation
    warning, until its removal); older releases and remote-code models know only ``past_key_values``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens at the head of every prompt, short of the shortest prompt's last (each prompt keeps
    a token of its own, whose logits start its decoding)."""
    if len(prompts) < 2:
        return 0
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def prompt_layout(prompts: Sequence[Sequence[int]], pad_id: int, *, share_head: bool = True) -> dict[str, torch.Tensor]:
    """Distinct prompts laid out for a shared-head prefill (on the CPU; move them where needed).

    head_ids [1, C]: the tokens every prompt starts with (C is 0 below MIN_SHARED_TOKENS, and
    without ``share_head``: see :func:`layout_support`);
    tail_ids [U, W]: the rest of each prompt, left-padded so that all end in the last column;
    mask [U, C + W] covers both; positions [U, W] of the tails count real tokens only.
    """
    shared = common_prefix_length(prompts) if share_head else 0
    if shared < MIN_SHARED_TOKENS:
        shared = 0
    width = max(len(p) for p in prompts) - shared
    tail_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for i, p in enumerate(prompts):
        tail = p[shared:]
        tail_ids[i, width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
        mask[i, shared + width - len(tail) :] = 1
    return {
        "head_ids": torch.tensor([list(prompts[0][:shared])], dtype=torch.long).reshape(1, shared),
        "tail_ids": tail_ids,
        "mask": mask,
        "positions": (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:],
    }


def prefill_head(model: Any, head_ids: torch.Tensor, rows: int, cache: Any, cache_arg: str, **forward: Any) -> None:
    """Run the shared head [1, C] into ``cache`` once and copy it to ``rows`` rows (differentiable:
    a training forward's gradient reaches the head from every row). Nothing when C is 0.
    ``forward``: further keywords for the model's forward (``logits_to_keep`` for a causal LM)."""
    if not head_ids.shape[1]:
        return
    positions = torch.arange(head_ids.shape[1], device=head_ids.device)[None]
    model(input_ids=head_ids, position_ids=positions, use_cache=True, **forward, **{cache_arg: cache})
    cache.batch_select_indices(torch.zeros(rows, dtype=torch.long, device=head_ids.device))


@torch.no_grad()
def decode(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    limit: int,
    stop_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    on_done: Callable[[int, Decoded], None] | None = None,
    stop_strings: StopStrings | None = None,
) -> list[Decoded]:
    """Decode up to ``limit`` new tokens for each prompt (token ids) in one batch.

    temperature 0 is greedy. ``generator`` None draws from torch's global generator.
    ``stop_strings`` (one list per prompt) also ends a prompt's decoding, at the token that
    completes one of its strings.
    ``on_done(index, decoded)`` is called as each prompt's decoding ends (a stop token at once; the
    length limit at the end), before the rest of the batch has finished.
    Raises :class:`UnsupportedModelError` for a model whose layers keep a recurrent state.
    """
    support = require_row_selection(model)
    stop_strings = stop_strings if stop_strings else None  # none of the rows has any
    device = next(model.parameters()).device
    cache_arg = cache_kwarg(model)
    cache = new_cache(model)  # filled in place by every forward below
    unique: dict[tuple[int, ...], int] = {}
    row_of = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
    distinct = list(unique)

    # 1. Prefill: the common head once, copied to each distinct prompt's row, then each prompt's
    #    own tail.
    layout = {k: v.to(device) for k, v in prompt_layout(distinct, pad_id, share_head=support.share_head).items()}
    prefill_head(model, layout["head_ids"], len(distinct), cache, cache_arg, logits_to_keep=1)
    mask, positions = layout["mask"], layout["positions"]  # [U, L], [U, W]
    prefill = model(
        input_ids=layout["tail_ids"], attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **{cache_arg: cache}
    )
    # 2. Copy each distinct prompt's cache row to every prompt that repeats it: [B, ...].
    index = torch.tensor(row_of, device=device)
    cache.batch_select_indices(index)
    logits = prefill.logits[:, -1][index]  # [B, V]
    mask = mask[index]
    next_pos = positions[index, -1] + 1  # [B]

    n = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(n)]
    logps: list[list[float]] = [[] for _ in range(n)]
    finished = [False] * n
    alive = torch.arange(n, device=device)  # rows of the cache -> prompt index
    stop = torch.tensor(list(stop_ids), device=device)
    # 3. Decode: choose, record the id and its log-prob, prune the rows that stopped.
    for t in range(limit):
        if temperature > 0:
            logp = processed_logprobs(logits, temperature, top_p)  # [b, V]
            choice = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)  # [b]
            chosen_logp = logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
        else:
            choice = logits.argmax(-1)
            chosen_logp = torch.zeros(choice.shape, device=choice.device)
        done = torch.isin(choice, stop)
        for r, (seq, tok, lp, d) in enumerate(zip(alive.tolist(), choice.tolist(), chosen_logp.tolist(), done.tolist())):
            tokens[seq].append(tok)
            logps[seq].append(lp)
            if not d and stop_strings is not None and stop_strings.check(seq, tokens[seq]):
                d = True
                done[r] = True
            finished[seq] = d
            if d and on_done is not None:
                on_done(seq, Decoded(tokens[seq], logps[seq], True))
        if t == limit - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            alive, choice, mask, next_pos = alive[keep], choice[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        step = model(
            input_ids=choice.unsqueeze(-1), attention_mask=mask, position_ids=next_pos.unsqueeze(-1), use_cache=True, **{cache_arg: cache}
        )
        logits = step.logits[:, -1]
        next_pos = next_pos + 1
    results = [Decoded(tokens[i], logps[i], finished[i]) for i in range(n)]
    if on_done is not None:
        for i, result in enumerate(results):
            if not result.finished:
                on_done(i, result)
    return results
