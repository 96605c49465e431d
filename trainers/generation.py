"""Generation backends: sample completions (token ids and their log-probabilities) from the policy.

Two backends share one interface, :class:`Backend`:

- :class:`TransformersBackend` (CPU and GPU): our own batched sampling loop over the KV cache.
  Identical prompts in a batch (the G members of a GRPO group) are prefilled once and their
  cache rows are copied G times; finished rows are pruned from the cache as they stop.
- :class:`VLLMBackend` (GPU with vLLM installed): vLLM's engine, with the current LoRA adapter
  saved and hot-loaded after every update.

Both sample from the distribution that :func:`token_logprobs` defines (temperature, then top-p),
and the trainer scores the sampled tokens with that same function, so the probabilities used in
the loss are those of the distribution the tokens were drawn from.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from envhub.models.loading import stop_token_ids

__all__ = [
    "Backend",
    "Completion",
    "TransformersBackend",
    "VLLMBackend",
    "cache_kwarg",
    "make_backend",
    "processed_logprobs",
    "token_logprobs",
    "vllm_available",
]


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    token_ids: list[int]
    """The sampled ids, exactly as sampled (the stop token included when one was sampled)."""
    logprobs: list[float]
    """log pi_sampler(token_t | prefix) of each sampled id, under temperature and top-p."""
    finished: bool
    """True when a stop token ended it; False when it hit the length limit (truncated)."""
    text: str
    """The decoded text, special tokens removed: what is sent to the environment."""


class Backend(Protocol):
    """Samples one completion per prompt (prompts given as token ids)."""

    def generate(
        self, prompts: Sequence[Sequence[int]], *, seed: int, max_new_tokens: int | None = None
    ) -> list[Completion]: ...

    def update_weights(self, model: Any) -> None:
        """Called after every optimizer step with the trained (peft) model."""
        ...


# ---------------------------------------------------------------------------------------------
# The sampling distribution, shared by generation and by the loss
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------


class TransformersBackend:
    """Batched sampling with the KV cache on any transformers causal LM (CPU or GPU)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        max_batch: int = 256,
        merge_lora: bool = True,
    ) -> None:
        self.model = model
        self.merge_lora = merge_lora
        self._snapshot: list[torch.Tensor] | None = None
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.max_batch = max_batch
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    def update_weights(self, model: Any) -> None:
        self.model = model  # same module, trained in place: nothing to copy

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self, prompts: Sequence[Sequence[int]], *, seed: int, max_new_tokens: int | None = None
    ) -> list[Completion]:
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out: list[Completion] = []
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling: the sampler is the policy itself
        try:
            with self._merged_lora():
                for start in range(0, len(prompts), self.max_batch):
                    out.extend(self._generate(prompts[start : start + self.max_batch], limit, generator))
        finally:
            self.model.train(was_training)
        return out

    @contextlib.contextmanager
    def _merged_lora(self) -> Iterator[None]:
        """Fold the LoRA update into the base weights while sampling, then restore them exactly.

        Unmerged LoRA costs two extra small matmuls per linear layer per decoded token (about 2.5x
        slower decoding on CPU for a 135M model). After sampling, the merge is undone and the
        base weights are copied back from a snapshot, so no rounding drift accumulates in them.
        """
        if not self.merge_lora or not hasattr(self.model, "merge_adapter") or not self.model.peft_config:
            yield
            return
        layers = [m for m in self.model.modules() if hasattr(m, "base_layer") and hasattr(m, "merge")]
        if self._snapshot is None:
            self._snapshot = [m.get_base_layer().weight.detach().clone() for m in layers]
        with torch.no_grad():
            self.model.merge_adapter()
            try:
                yield
            finally:
                self.model.unmerge_adapter()
                for m, original in zip(layers, self._snapshot):
                    m.get_base_layer().weight.copy_(original)

    @torch.no_grad()
    def _generate(
        self, prompts: Sequence[Sequence[int]], limit: int, generator: torch.Generator
    ) -> list[Completion]:
        from transformers import DynamicCache

        device = self.device
        # 1. Prefill each distinct prompt once. A GRPO group repeats its prompt G times.
        unique: dict[tuple[int, ...], int] = {}
        row_of = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
        distinct = list(unique)
        width = max(len(p) for p in distinct)
        ids = torch.full((len(distinct), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(distinct), width), dtype=torch.long)
        for i, p in enumerate(distinct):  # left padding: every prompt ends at column width-1
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # positions count real tokens only
        cache = DynamicCache()  # filled in place by every forward below
        cache_arg = cache_kwarg(self.model)
        prefill = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: cache},
        )
        # 2. Copy each distinct prompt's cache row to every sequence that uses it: [B, ...].
        index = torch.tensor(row_of, device=device)
        cache.batch_select_indices(index)
        logits = prefill.logits[:, -1][index]  # [B, V]
        mask = mask[index]  # [B, L]
        next_pos = positions[index, -1] + 1  # [B]

        n = len(prompts)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        finished = [False] * n
        alive = torch.arange(n, device=device)  # rows of the cache -> sequence index
        stop = torch.tensor(self.stop_ids, device=device)
        # 3. Decode: sample, record the sampled id and its log-prob, prune rows that stopped.
        for t in range(limit):
            if self.temperature > 0:
                logp = processed_logprobs(logits, self.temperature, self.top_p)  # [b, V]
                choice = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)  # [b]
                chosen_logp = logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
            else:  # temperature 0: greedy decoding (evaluation only; its log-prob is 0)
                choice = logits.argmax(-1)
                chosen_logp = torch.zeros(choice.shape, device=choice.device)
            done = torch.isin(choice, stop)
            for row, (seq, tok, lp, d) in enumerate(
                zip(alive.tolist(), choice.tolist(), chosen_logp.tolist(), done.tolist())
            ):
                tokens[seq].append(tok)
                logps[seq].append(lp)
                finished[seq] = d
            if t == limit - 1 or bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                alive, choice, mask, next_pos = alive[keep], choice[keep], mask[keep], next_pos[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            step = self.model(
                input_ids=choice.unsqueeze(-1),
                attention_mask=mask,
                position_ids=next_pos.unsqueeze(-1),
                use_cache=True,
                **{cache_arg: cache},
            )
            logits = step.logits[:, -1]
            next_pos = next_pos + 1
        return [
            Completion(
                token_ids=tokens[i],
                logprobs=logps[i],
                finished=finished[i],
                text=self.tokenizer.decode(tokens[i], skip_special_tokens=True),
            )
            for i in range(n)
        ]


# ---------------------------------------------------------------------------------------------
# vLLM (GPU only)
# ---------------------------------------------------------------------------------------------


def vllm_available() -> tuple[bool, str]:
    """Whether the vLLM backend can run here, and why not when it cannot."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False, "vllm is not installed"
    if not torch.cuda.is_available():
        return False, "vllm needs a CUDA GPU and none is available"
    return True, ""


class VLLMBackend:
    """vLLM generation with the trained LoRA adapter hot-loaded after each update.

    The base model is loaded once by vLLM (``enable_lora=True``); after every optimizer step the
    peft adapter is saved to a scratch folder and passed as a new ``LoRARequest`` (a new id, so
    vLLM reloads it). Sampled ids come from vLLM; their log-probabilities are recomputed by the
    trainer under :func:`token_logprobs`, so the loss never mixes two engines' numerics.
    """

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        lora_rank: int = 16,
        gpu_memory_utilization: float = 0.35,
        max_model_len: int = 4096,
    ) -> None:
        ok, why = vllm_available()
        if not ok:
            raise RuntimeError(f"the vllm backend is unavailable: {why}")
        from vllm import LLM

        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.stop_ids = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
        self.llm = LLM(
            model=model_path,
            enable_lora=True,
            max_lora_rank=max(8, lora_rank),
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype="bfloat16",
        )
        self._scratch = tempfile.TemporaryDirectory(prefix="envhub-vllm-lora-")
        self._lora = None
        self._version = 0

    def update_weights(self, model: Any) -> None:
        from vllm.lora.request import LoRARequest

        self._version += 1
        path = os.path.join(self._scratch.name, f"v{self._version}")
        model.save_pretrained(path)
        self._lora = LoRARequest(f"policy-v{self._version}", self._version, path)

    def generate(
        self, prompts: Sequence[Sequence[int]], *, seed: int, max_new_tokens: int | None = None
    ) -> list[Completion]:
        from vllm import SamplingParams

        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        params = [
            SamplingParams(
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=limit,
                seed=seed * 100_003 + i,
                skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, params, lora_request=self._lora, use_tqdm=False)
        result = []
        for output in outputs:
            sample = output.outputs[0]
            result.append(
                Completion(
                    token_ids=list(sample.token_ids),
                    logprobs=[float("nan")] * len(sample.token_ids),  # recomputed by the trainer
                    finished=sample.finish_reason == "stop",
                    text=sample.text,
                )
            )
        return result


def make_backend(name: str, model: Any, tokenizer: Any, *, model_path: str, **kwargs: Any) -> Backend:
    """Build the backend called ``name`` ("transformers" or "vllm")."""
    if name == "transformers":
        kwargs.pop("lora_rank", None)
        return TransformersBackend(model, tokenizer, **kwargs)
    if name == "vllm":
        return VLLMBackend(model_path, tokenizer, **kwargs)
    raise ValueError(f"unknown generation backend {name!r}: expected 'transformers' or 'vllm'")
