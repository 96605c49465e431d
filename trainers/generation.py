"""Generation backends: sample completions (token ids and their log-probabilities) from the policy.

Two backends share one interface, :class:`Backend`:

- :class:`TransformersBackend` (CPU and GPU): envhub's batched decoding loop over the KV cache
  (:func:`envhub.models.decoding.decode`): a GRPO group's shared prompt, and the head common to
  all prompts, are prefilled once; finished rows are pruned from the cache as they stop. With
  ``mixed_precision="bf16"`` it decodes under the same bfloat16 autocast as the loss forward.
- :class:`VLLMBackend` (CPU or GPU, ``make vllm``): a vLLM server in its own process and
  environment (:mod:`envhub.models.vllm_server`), its weights synced after every update by
  hot-loading the LoRA adapter or by pushing merged weights.

Both sample from the distribution that :func:`~envhub.models.decoding.token_logprobs` defines
(temperature, then top-p), and the trainer scores the sampled tokens with that same function, so
the probabilities used in the loss are those of the distribution the tokens were drawn from.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from envhub.models.decoding import StopStrings, cache_kwarg, decode, processed_logprobs, token_logprobs
from envhub.models.loading import stop_token_ids
from envhub.models.precision import MixedPrecision, autocast

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
    "sync_scratch_root",
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
    """True when a stop token or stop string ended it; False when it hit the length limit (truncated)."""
    text: str
    """The decoded text, special tokens removed: what is sent to the environment."""


class Backend(Protocol):
    """Samples one completion per prompt (prompts given as token ids)."""

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        seed: int,
        max_new_tokens: int | None = None,
        stop: Sequence[Sequence[str]] | None = None,
    ) -> list[Completion]:
        """``stop``: per prompt, the strings that end its completion (kept in it), or None."""
        ...

    def update_weights(self, model: Any) -> None:
        """Called after every optimizer step with the trained (peft) model."""
        ...


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
        mixed_precision: MixedPrecision = "no",
    ) -> None:
        self.model = model
        self.mixed_precision = mixed_precision
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
        self,
        prompts: Sequence[Sequence[int]],
        *,
        seed: int,
        max_new_tokens: int | None = None,
        stop: Sequence[Sequence[str]] | None = None,
    ) -> list[Completion]:
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        generator = torch.Generator(device=self.device).manual_seed(seed)
        stops = list(stop) if stop is not None else [()] * len(prompts)
        out: list[Completion] = []
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling: the sampler is the policy itself
        try:
            with self._merged_lora(), autocast(self.device, self.mixed_precision):
                for start in range(0, len(prompts), self.max_batch):
                    part = slice(start, start + self.max_batch)
                    out.extend(self._generate(prompts[part], limit, generator, stops[part]))
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

    def _generate(
        self, prompts: Sequence[Sequence[int]], limit: int, generator: torch.Generator, stops: Sequence[Sequence[str]]
    ) -> list[Completion]:
        decoded = decode(
            self.model,
            prompts,
            limit=limit,
            stop_ids=self.stop_ids,
            pad_id=self.pad_id,
            temperature=self.temperature,
            top_p=self.top_p,
            generator=generator,
            stop_strings=StopStrings(self.tokenizer, stops),
        )
        return [
            Completion(
                token_ids=d.token_ids,
                logprobs=d.logprobs,
                finished=d.finished,
                text=self.tokenizer.decode(d.token_ids, skip_special_tokens=True),
            )
            for d in decoded
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
CPU_MEASUREMENT = "on a CPU it was no faster for the default model: 10.7 s a step against 10.4 s, benchmarks/trainer_vs_trl.md"


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


#: Where merged weights are written for the engine to reload when they fit: memory, not disk.
SHARED_MEMORY = "/dev/shm"


def sync_scratch_root(model: Any, weight_sync: str, shm: str = SHARED_MEMORY) -> str | None:
    """The folder a merged push writes its safetensors in: ``shm`` (tmpfs) when it holds four
    copies of the base weights with room to spare (two versions live for a moment), else the
    system's temporary folder (None). Saving the default model's 540 MB took 0.8-1.1 s there
    against 1.5-1.9 s in /tmp on disk (2 cores, 2026-12-08)."""
    if weight_sync != "merged" or not os.path.isdir(shm):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    size = sum(p.numel() * p.element_size() for p in base.parameters())
    try:
        fs = os.statvfs(shm)
    except OSError:
        return None
    return shm if fs.f_bavail * fs.f_frsize > 4 * size else None


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
    - ``merged``: the adapter is folded into the base weights, which are written as safetensors
      (in memory where they fit: :func:`sync_scratch_root`) and reloaded in place by the engine
      (``reload_weights``); sampling then runs at base-model speed.
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
        self._scratch = tempfile.TemporaryDirectory(prefix="envhub-vllm-sync-", dir=sync_scratch_root(model, self.weight_sync))
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
        self,
        prompts: Sequence[Sequence[int]],
        *,
        seed: int,
        max_new_tokens: int | None = None,
        stop: Sequence[Sequence[str]] | None = None,
    ) -> list[Completion]:
        import asyncio

        from envhub.http.transport import run_blocking

        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        stops = [tuple(s) for s in stop] if stop is not None else [()] * len(prompts)
        # One request per distinct prompt (and its stop strings) with n samples (a GRPO group is
        # one request): vLLM seeds its n samples seed, seed+1, ..., so they differ and are
        # reproducible.
        rows: dict[tuple[tuple[int, ...], tuple[str, ...]], list[int]] = {}
        for i, p in enumerate(prompts):
            rows.setdefault((tuple(p), stops[i]), []).append(i)
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
                # the ids vLLM returns run to the token that completed the string either way
                **({"stop": list(strings), "include_stop_str_in_output": True} if strings else {}),
                **sampling,
            }
            for k, ((prompt, strings), members) in enumerate(rows.items())
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
        kwargs.pop("mixed_precision", None)  # the server samples in its own dtype; the loss recomputes
        return VLLMBackend(model, tokenizer, model_path=model_path, **kwargs)
    raise ValueError(f"unknown generation backend {name!r}: expected 'transformers' or 'vllm'")
