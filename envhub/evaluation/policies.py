"""Policies: what writes the assistant's messages during an evaluation.

Every policy has one coroutine, ``complete(messages, seed=..., stop=...) -> Completion``, called by
many episodes at once; ``stop`` is the environment's strings that end a reply (its manifest's
``[generation] stop``), and the reply keeps the one it ends with:

- :class:`EndpointPolicy`: any OpenAI-compatible chat endpoint (retries with backoff on timeouts,
  429 and 5xx, an optional rate limit, the API key from the environment), through envhub's HTTP
  client (:mod:`~envhub.http.transport`);
- :class:`LocalPolicy`: a local transformers model, optionally with a LoRA adapter folder; the
  concurrent requests are gathered into batches, so that N episodes cost one batched generation
  per turn rather than N;
- :class:`VLLMPolicy`: the same local model (and adapter) served by vLLM in a process of its own
  (``--engine vllm``), asked through its OpenAI API as an endpoint is; vLLM batches the requests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from envhub.http.chat import (
    RateLimiter,
    RetryPolicy,
    api_key_from_env,
    chat_async,
)
from envhub.http.transport import ConnectionPool
from envhub.evaluation.local_model import Batcher, LocalModel, Sampling, cut_after_stop

__all__ = ["ENGINES", "Completion", "EndpointPolicy", "LocalPolicy", "Policy", "VLLMPolicy", "make_policy", "training_run"]

#: What can run a local model: transformers in this process, or vLLM in its own.
ENGINES = ("transformers", "vllm")


@dataclass
class Completion:
    """One assistant message and what producing it cost."""

    text: str
    finish_reason: str | None
    model_s: float
    usage: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1


class Policy:
    """Base of the policies. ``describe()`` is what results record as the model."""

    sampling: Sampling

    async def complete(
        self, messages: list[dict[str, str]], *, seed: int | None = None, stop: Sequence[str] = ()
    ) -> Completion:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class EndpointPolicy(Policy):
    """An OpenAI-compatible chat endpoint (``base_url`` is the API root, e.g. ``http://127.0.0.1:8000/v1``)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        sampling: Sampling | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        retry: RetryPolicy | None = None,
        rate_limit: float | None = None,
        max_connections: int = 256,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.sampling = sampling or Sampling()
        self.api_key = api_key if api_key is not None else api_key_from_env(api_key_env)
        self.retry = retry or RetryPolicy()
        self.limiter = RateLimiter(rate_limit) if rate_limit else None
        self._max_connections = max_connections
        self._client: Any = None  # made in the running loop, on first use

    #: Whether the server keeps a stop string in the reply when asked (vLLM's
    #: ``include_stop_str_in_output``). The OpenAI API drops it, and an environment's rubric may need
    #: it (``</answer>``), so other endpoints are not sent ``stop``: their reply is cut after it here.
    keeps_stop_strings = False

    async def complete(
        self, messages: list[dict[str, str]], *, seed: int | None = None, stop: Sequence[str] = ()
    ) -> Completion:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "max_tokens": self.sampling.max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        if stop and self.keeps_stop_strings:
            body.update(stop=list(stop), include_stop_str_in_output=True)
        if self._client is None:
            self._client = ConnectionPool.for_url(self.base_url, max_connections=self._max_connections)
        result = await chat_async(
            self._client, self.base_url, body, api_key=self.api_key, retry=self.retry, limiter=self.limiter
        )
        text, finish = cut_after_stop(result.text, stop, result.finish_reason)
        return Completion(text, finish, result.latency_s, result.usage, result.attempts)

    def describe(self) -> dict[str, Any]:
        return {"kind": "endpoint", "name": self.model, "base_url": self.base_url}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class LocalPolicy(Policy):
    """A local transformers model (and LoRA adapter); concurrent requests are batched by a
    :class:`~envhub.evaluation.local_model.Batcher`, so N episodes in flight cost one batched
    generation per turn rather than N."""

    def __init__(
        self,
        model: str | None = None,
        *,
        adapter: str | None = None,
        sampling: Sampling | None = None,
        device: str | None = None,
        max_batch: int = 64,
        local_model: LocalModel | None = None,
    ) -> None:
        self.sampling = sampling or Sampling()
        self.local = local_model or LocalModel(model, device=device, max_batch=max_batch)
        self.adapter_dir = adapter
        self.adapter_name: str | None = None
        if adapter is not None and local_model is None:
            self.local.fold_adapter(adapter)  # our own model, one adapter: generate at the base model's speed
        elif adapter is not None:
            self.adapter_name = "eval-adapter"
            if self.adapter_name not in self.local.adapters:
                self.local.load_adapter(self.adapter_name, adapter)
        self.batcher = Batcher(self.local, max_batch=max_batch)

    async def complete(
        self, messages: list[dict[str, str]], *, seed: int | None = None, stop: Sequence[str] = ()
    ) -> Completion:
        sampling = replace(self.sampling, stop=tuple(stop)) if stop else self.sampling
        gen, elapsed = await self.batcher.submit(messages, sampling, adapter=self.adapter_name, seed=seed)
        usage = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens}
        # model_s is the batch's time: each request waited for all of it
        return Completion(gen.text, gen.finish_reason, elapsed, usage)

    def describe(self) -> dict[str, Any]:
        return _with_adapter({"kind": "local", "name": self.local.name, "path": self.local.path}, self.adapter_dir)

    async def aclose(self) -> None:
        await self.batcher.aclose()


class VLLMPolicy(EndpointPolicy):
    """A local model (and LoRA adapter) served by vLLM in its own process for the length of the run
    (:class:`~envhub.models.vllm_server.VLLMServer`), asked over 127.0.0.1 as any endpoint is; the
    adapter is served under the name ``eval-adapter``. ``server`` lends a running one instead."""

    ADAPTER_NAME = "eval-adapter"
    keeps_stop_strings = True  # vLLM stops there and keeps the string when asked

    def __init__(
        self,
        model: str | None = None,
        *,
        adapter: str | None = None,
        sampling: Sampling | None = None,
        retry: RetryPolicy | None = None,
        server: Any = None,
    ) -> None:
        from envhub.models.loading import resolve_model
        from envhub.models.vllm_server import LoraSlots, VLLMServer

        self.path = str(resolve_model(model))
        self.name = model or "default"
        self.adapter_dir = adapter
        adapters = {self.ADAPTER_NAME: adapter} if adapter else {}
        self._owns_server = server is None
        self.server = server or VLLMServer(
            self.path, served_name=self.name, adapters=adapters,
            lora=LoraSlots.for_adapters(list(adapters.values())) if adapters else None,
        )  # fmt: skip
        if server is not None and adapter:
            server.load_adapter(self.ADAPTER_NAME, adapter)
        served = self.ADAPTER_NAME if adapter else self.server.served_name
        super().__init__(self.server.base_url, served, sampling=sampling, api_key="", retry=retry)

    def describe(self) -> dict[str, Any]:
        return _with_adapter({"kind": "local", "engine": "vllm", "name": self.name, "path": self.path}, self.adapter_dir)

    async def aclose(self) -> None:
        await super().aclose()
        if self._owns_server:
            self.server.stop()


def _with_adapter(described: dict[str, Any], adapter: str | None) -> dict[str, Any]:
    """``described`` plus the adapter folder and the training run that wrote it, when there is one."""
    if adapter:
        described["adapter"] = adapter
        run = training_run(adapter)
        if run:
            described["adapter_run"] = run
    return described


def training_run(adapter: str | Path) -> dict[str, Any] | None:
    """What the trainer's provenance.json says about the run that wrote ``adapter`` (None: none found).

    The trainer writes it into the adapter folder and into the run folder above it; a checkpoint
    folder holds one too.
    """
    folder = Path(adapter)
    for candidate in (folder / "provenance.json", folder.parent / "provenance.json"):
        if not candidate.is_file():
            continue
        try:
            data = json.loads(candidate.read_text())
        except (OSError, ValueError):
            return None  # an unreadable provenance names nothing; the adapter's path still does
        config = data.get("config") or {}
        final = data.get("final_metrics") or {}
        run = {
            "provenance": str(candidate),
            "output_dir": config.get("output_dir"),
            "algo": data.get("algo"),
            "environments": [e.get("ref") for e in data.get("environments") or [] if isinstance(e, dict)],
            "base_model": (data.get("model") or {}).get("name"),
            "steps": final.get("step"),
            "reward_mean": final.get("reward/mean"),
            "finished_at": data.get("finished_at"),
        }
        return {k: v for k, v in run.items() if v not in (None, [])}
    return None


def make_policy(
    *,
    model: str | None = None,
    base_url: str | None = None,
    adapter: str | None = None,
    sampling: Sampling | None = None,
    api_key_env: str | None = None,
    rate_limit: float | None = None,
    retry: RetryPolicy | None = None,
    device: str | None = None,
    engine: str = "transformers",
) -> Policy:
    """An endpoint policy when ``base_url`` is given, else a local model (the embedded default if no
    ``model``) run by ``engine``: transformers here, or vLLM in a process of its own."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if base_url and engine != "transformers":
        raise ValueError("--engine is for a local model; an endpoint runs whatever engine it runs")
    if engine == "vllm":
        return VLLMPolicy(model, adapter=adapter, sampling=sampling, retry=retry)
    if base_url:
        if adapter:
            raise ValueError("--adapter is for a local model; an endpoint serves its adapters by model name")
        if not model:
            raise ValueError("an endpoint needs --model (the model name it serves; see GET /v1/models)")
        return EndpointPolicy(
            base_url, model, sampling=sampling, api_key_env=api_key_env, rate_limit=rate_limit, retry=retry
        )
    return LocalPolicy(model, adapter=adapter, sampling=sampling, device=device)
