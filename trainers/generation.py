"""Generation backends: sample completions (token ids and their log-probabilities) from the policy.

Two backends share one interface, :class:`Backend`:

- :class:`TransformersBackend` (CPU and GPU): our own batched sampling loop over the KV cache.
  Identical prompts in a batch (the G members of a GRPO group) are prefilled once and their
  cache rows are copied G times; finished rows are pruned from the cache as they stop.
- :class:`VLLMBackend` (CPU or GPU, ``make vllm``): a vLLM server in its own process and
  environment (:mod:`envhub.models.vllm_server`), its weights synced after every update by
  hot-loading the LoRA adapter or by pushing merged weights.

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
    "MERGED_SYNC_MAX_PARAMS",
    "TransformersBackend",
    "VLLMBackend",
    "base_weight_snapshot",
    "cache_kwarg",
    "make_backend",
    "merged_lora",
    "pick_weight_sync",
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


def _lora_layers(model: Any) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "merge")]


def base_weight_snapshot(model: Any) -> list[torch.Tensor]:
    """Copies of the base weights of ``model``'s LoRA layers (none when it has no adapter)."""
    return [m.get_base_layer().weight.detach().clone() for m in _lora_layers(model)]


@contextlib.contextmanager
def merged_lora(model: Any, snapshot: Sequence[torch.Tensor]) -> Iterator[None]:
    """Fold ``model``'s LoRA update into its base weights inside the block, then restore them.

    After the block the merge is undone and the base weights are copied back from ``snapshot``
    (:func:`base_weight_snapshot`), so no rounding drift accumulates in them.
    """
    if not hasattr(model, "merge_adapter") or not model.peft_config:
        yield
        return
    with torch.no_grad():
        model.merge_adapter()
        try:
            yield
        finally:
            model.unmerge_adapter()
            for m, original in zip(_lora_layers(model), snapshot):
                m.get_base_layer().weight.copy_(original)


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
        """Unmerged LoRA costs two extra small matmuls per linear layer per decoded token (about
        2.5x slower decoding on CPU for a 135M model), so sampling runs on merged weights."""
        if not self.merge_lora:
            yield
            return
        if self._snapshot is None:
            self._snapshot = base_weight_snapshot(self.model)
        with merged_lora(self.model, self._snapshot):
            yield

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
# vLLM: its own server process (envhub.models.vllm_server), CPU or GPU
# ---------------------------------------------------------------------------------------------

#: Weight sync per model size (parameters). Pushing merged weights costs a save and an in-place
#: reload that grow with the model; a hot-loaded LoRA adapter costs little to load but slows every
#: decoded token. For 135M parameters on CPU (benchmarks/trainer_vs_trl.md) merging wins: 1.9 s of
#: sync + 3.1 s of rollout against 0.08 s + 17.6 s. The 1B crossover is an estimate, not measured.
MERGED_SYNC_MAX_PARAMS = 1_000_000_000


def vllm_available() -> tuple[bool, str]:
    """Whether the vLLM backend can run here (its environment is installed), and why not."""
    from envhub.models.vllm_server import vllm_status

    return vllm_status()


#: What the vLLM backend measured against the transformers one on this project's CPU machines, for
#: the default model (benchmarks/trainer_vs_trl.md): why ``auto`` keeps transformers on a CPU.
CPU_MEASUREMENT = "on a CPU it was slower for the default model: 10.1 s a step against 8.8 s, benchmarks/trainer_vs_trl.md"


def choose_backend(requested: str) -> tuple[str, str]:
    """The backend to run for ``requested`` (``auto``, ``transformers`` or ``vllm``), and why, in words."""
    if requested != "auto":
        return requested, "as configured"
    installed, why = vllm_available()
    if not installed:
        return "transformers", f"auto: {why}"
    from envhub.models.vllm_server import on_cpu

    if on_cpu():
        return "transformers", f"auto: vLLM is installed, but {CPU_MEASUREMENT}"
    return "vllm", "auto: vLLM is installed and this machine has an NVIDIA GPU"


def pick_weight_sync(model: Any) -> str:
    """``merged`` for models up to :data:`MERGED_SYNC_MAX_PARAMS` parameters, else ``adapter``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    size = sum(p.numel() for p in base.parameters())
    return "merged" if size <= MERGED_SYNC_MAX_PARAMS else "adapter"


class VLLMBackend:
    """Sampling through a vLLM server, kept in step with the trained policy after every update.

    Two ways to sync the weights (``weight_sync``):

    - ``adapter``: the peft adapter is saved and hot-loaded under a new name
      (``/v1/load_lora_adapter``); the base weights stay as they are.
    - ``merged``: the adapter is folded into the base weights, which are written as safetensors and
      reloaded in place by the engine (``reload_weights``); sampling then runs at base-model speed.
    - ``auto``: :func:`pick_weight_sync`.

    The server returns the sampled token ids themselves (``return_token_ids``), which are what the
    trainer trains on; the text sent to the environment is decoded from them here, as the
    transformers backend does. Log-probabilities are left NaN: the trainer recomputes them under
    :func:`token_logprobs` (temperature, top-p), so the loss never mixes two engines' numerics.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_path: str,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        lora_rank: int = 16,
        weight_sync: str = "auto",
        max_model_len: int = 4096,
        server: Any = None,
    ) -> None:
        from envhub.models.vllm_server import LoraSlots, VLLMServer

        if weight_sync not in ("auto", "adapter", "merged"):
            raise ValueError(f"weight_sync must be auto, adapter or merged, not {weight_sync!r}")
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.weight_sync = pick_weight_sync(model) if weight_sync == "auto" else weight_sync
        self._tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        self._owns_server = server is None
        self.server = server or VLLMServer(
            model_path,
            lora=LoraSlots(max_rank=max(8, lora_rank), max_loras=2) if self.weight_sync == "adapter" else None,
            weight_pushes=self.weight_sync == "merged",
            max_model_len=max_model_len,
        )
        self._scratch = tempfile.TemporaryDirectory(prefix="envhub-vllm-sync-")
        self._snapshot: list[torch.Tensor] | None = None
        self._served = self.server.served_name  # model name the requests use
        self._version = 0
        #: Seconds each weight sync took (save + load), for benchmarks and metrics.
        self.sync_seconds: list[float] = []

    def close(self) -> None:
        if self._owns_server:
            self.server.stop()
        self._scratch.cleanup()

    # --- weights --------------------------------------------------------------------------------

    def update_weights(self, model: Any) -> None:
        import time

        t0 = time.perf_counter()
        self._version += 1
        folder = os.path.join(self._scratch.name, f"v{self._version}")
        if self.weight_sync == "adapter":
            model.save_pretrained(folder)
            name = f"policy-v{self._version}"
            self.server.load_adapter(name, folder)
            previous, self._served = self._served, name
            if previous != self.server.served_name:
                self.server.unload_adapter(previous)
        else:
            self._push_merged(model, folder)
        if self._version > 1:  # the previous version's files are no longer read
            with contextlib.suppress(OSError):
                import shutil

                shutil.rmtree(os.path.join(self._scratch.name, f"v{self._version - 1}"))
        self.sync_seconds.append(time.perf_counter() - t0)

    def _push_merged(self, model: Any, folder: str) -> None:
        from safetensors.torch import save_file

        if self._snapshot is None:
            self._snapshot = base_weight_snapshot(model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        with merged_lora(model, self._snapshot):
            weights = {
                name.replace(".base_layer.", "."): tensor.detach().contiguous().clone()
                for name, tensor in base.state_dict().items()
                if "lora_" not in name and not (self._tied and name == "lm_head.weight")
            }
        os.makedirs(folder)
        save_file(weights, os.path.join(folder, "model.safetensors"))
        self.server.reload_weights(folder)

    # --- sampling -------------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Sequence[int]], *, seed: int, max_new_tokens: int | None = None
    ) -> list[Completion]:
        import asyncio

        from envhub.http.transport import run_blocking

        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        # One request per distinct prompt with n samples (a GRPO group is one request): vLLM
        # seeds its n samples seed, seed+1, ..., so they differ and are reproducible.
        rows: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prompts):
            rows.setdefault(tuple(p), []).append(i)
        sampling: dict[str, Any] = {"temperature": self.temperature, "max_tokens": limit}
        if self.temperature > 0 and self.top_p < 1.0:
            sampling["top_p"] = self.top_p
        bodies = [
            {
                "model": self._served,
                "prompt": list(prompt),
                "n": len(members),
                "seed": (seed * 100_003 + k * 7919) & 0x7FFFFFFF,
                "stop_token_ids": self.stop_ids,
                "return_token_ids": True,
                "skip_special_tokens": True,
                **sampling,
            }
            for k, (prompt, members) in enumerate(rows.items())
        ]

        async def all_requests() -> list[Any]:
            return await asyncio.gather(*(self.server.apost("/v1/completions", body) for body in bodies))

        out: list[Completion | None] = [None] * len(prompts)
        for members, answer in zip(rows.values(), run_blocking(all_requests())):
            for i, choice in zip(members, sorted(answer["choices"], key=lambda c: c["index"])):
                ids = [int(t) for t in choice["token_ids"]]
                out[i] = Completion(
                    token_ids=ids,
                    logprobs=[float("nan")] * len(ids),  # recomputed by the trainer
                    finished=choice["finish_reason"] == "stop",
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                )
        return [c for c in out if c is not None]


def make_backend(name: str, model: Any, tokenizer: Any, *, model_path: str, **kwargs: Any) -> Backend:
    """Build the backend called ``name`` ("transformers" or "vllm")."""
    if name == "transformers":
        kwargs.pop("lora_rank", None)
        kwargs.pop("weight_sync", None)
        return TransformersBackend(model, tokenizer, **kwargs)
    if name == "vllm":
        return VLLMBackend(model, tokenizer, model_path=model_path, **kwargs)
    raise ValueError(f"unknown generation backend {name!r}: expected 'transformers' or 'vllm'")
