"""``envhub serve-model``: an OpenAI-compatible chat server over a local transformers model.

Routes (the subset of the OpenAI API that chat clients use):

- ``GET /v1/models``: the base model and every loaded adapter, each a model name;
- ``POST /v1/chat/completions``: ``messages``, ``model``, ``temperature``, ``top_p``,
  ``max_tokens`` (or ``max_completion_tokens``), ``n``, ``stop``, ``seed``, ``stream``;
  ``response_format`` is accepted but not enforced (the answer is whatever the model writes);
- ``POST /v1/load_lora_adapter`` (``{"lora_name", "lora_path"}``, as vLLM has it) and
  ``POST /v1/unload_lora_adapter``: adapters by name at run time;
- ``GET /health``.

Concurrent non-streaming requests are batched into one generation (see
:class:`~envhub.evaluation.local_model.Batcher`); a streaming request generates alone and sends
server-sent events as tokens come. Errors answer in the OpenAI shape ``{"error": {...}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import replace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from envhub.errors import AdapterMismatchError
from envhub.evaluation.local_model import Batcher, Generation, LocalModel, Sampling

__all__ = ["create_app", "serve"]

_MAX_TOKENS_LIMIT = 8192


class BadRequest(Exception):
    def __init__(self, message: str, *, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.status = status
        self.code = code


def _error(message: str, *, status: int = 400, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"`{name}` must be a number in [{low}, {high}], got {value!r}", param=name)
    return float(value)


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list of {role, content}", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a `role`", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string", param="messages")
        role = m["role"] if m["role"] != "developer" else "system"
        out.append({"role": role, "content": content})
    return out


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise BadRequest("`stop` must be a string or a list of strings", param="stop")


def _apply_stops(gen: Generation, stops: list[str]) -> Generation:
    cut = min((gen.text.find(s) for s in stops if s in gen.text), default=-1)
    if cut < 0:
        return gen
    return Generation(gen.text[:cut], "stop", gen.prompt_tokens, gen.completion_tokens)


def create_app(model: LocalModel, *, served_name: str | None = None, max_batch: int = 64) -> Starlette:
    """The server's ASGI app over an already loaded :class:`LocalModel`."""
    base_names = {served_name or model.name, model.name, "default"}
    primary = served_name or model.name
    batcher = Batcher(model, max_batch=max_batch)
    created = int(time.time())

    def resolve(name: Any) -> str | None:
        """Adapter name for ``model`` (None for the base); BadRequest (404) for an unknown name."""
        if name is None or name in base_names:
            return None
        if name in model.adapters:
            return name
        known = sorted({primary, *model.adapters})
        raise BadRequest(f"model {name!r} not found; served: {known}", param="model", status=404, code="model_not_found")

    async def models(request: Request) -> JSONResponse:
        data = [{"id": primary, "object": "model", "created": created, "owned_by": "envhub", "root": model.path}]
        data += [
            {"id": name, "object": "model", "created": created, "owned_by": "envhub", "root": path, "parent": primary}
            for name, path in model.adapters.items()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": primary, "adapters": sorted(model.adapters)})

    async def load_adapter(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error("the body is not JSON")
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return _error("give `lora_name` and `lora_path` (a peft adapter folder)", param="lora_name")
        if name in base_names:
            return _error(f"{name!r} is the base model's name", param="lora_name")
        try:
            await asyncio.to_thread(model.load_adapter, name, path)
        except AdapterMismatchError as exc:
            return _error(str(exc), param="lora_path", code="adapter_mismatch")
        return JSONResponse({"status": "loaded", "name": name, "path": path})

    async def unload_adapter(request: Request) -> JSONResponse:
        body = await request.json()
        name = body.get("lora_name")
        if name not in model.adapters:
            return _error(f"no adapter {name!r} is loaded", param="lora_name", status=404)
        model.model.delete_adapter(name)
        del model.adapters[name]
        return JSONResponse({"status": "unloaded", "name": name})

    async def chat(request: Request):
        try:
            try:
                body = await request.json()
            except ValueError:
                raise BadRequest("the body is not JSON") from None
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            messages = _messages(body)
            adapter = resolve(body.get("model"))
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) or 256
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= _MAX_TOKENS_LIMIT:
                raise BadRequest(f"`max_tokens` must be an int in [1, {_MAX_TOKENS_LIMIT}]", param="max_tokens")
            sampling = Sampling(
                temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
                max_tokens=max_tokens,
            )
            n = body.get("n", 1)
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
                raise BadRequest("`n` must be an int in [1, 64]", param="n")
            seed = body.get("seed")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise BadRequest("`seed` must be an int", param="seed")
            stops = _stops(body)
            sampling = replace(sampling, stop=tuple(stops))  # decoding ends there, not at max_tokens
            stream = bool(body.get("stream", False))
            if stream and n != 1:
                raise BadRequest("streaming supports n = 1 only", param="n")
        except BadRequest as exc:
            return _error(str(exc), status=exc.status, param=exc.param, code=exc.code)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        name = body.get("model") or primary
        if stream:
            return StreamingResponse(
                _stream_events(model, messages, sampling, adapter, completion_id, name, stops, body),
                media_type="text/event-stream",
            )
        try:
            results = await asyncio.gather(
                *(batcher.submit(messages, sampling, adapter=adapter, seed=None if seed is None else seed + i) for i in range(n))
            )
        except Exception as exc:  # the model failed: say so, in the API's shape
            return _error(f"generation failed: {type(exc).__name__}: {exc}", status=500)
        gens = [_apply_stops(g, stops) for g, _ in results]
        prompt_tokens = gens[0].prompt_tokens
        completion_tokens = sum(g.completion_tokens for g in gens)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": name,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": g.text},
                        "finish_reason": g.finish_reason,
                        "logprobs": None,
                    }
                    for i, g in enumerate(gens)
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await batcher.aclose()

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/load_lora_adapter", load_adapter, methods=["POST"]),
            Route("/v1/unload_lora_adapter", unload_adapter, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _chunk(completion_id: str, name: str, delta: dict, finish: str | None, usage: dict | None = None) -> str:
    data: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": name,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if usage is not None:
        data["usage"] = usage
    return f"data: {json.dumps(data)}\n\n"


def _stream_events(model, messages, sampling, adapter, completion_id, name, stops, body):
    """Server-sent events of a streamed completion (a sync generator: starlette runs it in a thread)."""
    yield _chunk(completion_id, name, {"role": "assistant", "content": ""}, None)
    sent = ""
    final: Generation | None = None
    try:
        for piece in model.stream(messages, sampling, adapter=adapter):
            if isinstance(piece, Generation):
                final = piece
                break
            text = sent + piece
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                if text[len(sent) : cut]:
                    yield _chunk(completion_id, name, {"content": text[len(sent) : cut]}, None)
                final = Generation(text[:cut], "stop", 0, 0)
                break
            sent = text
            yield _chunk(completion_id, name, {"content": piece}, None)
    except Exception as exc:  # headers are sent: report the failure in the stream
        yield f"data: {json.dumps({'error': {'message': f'generation failed: {exc}', 'type': 'server_error'}})}\n\n"
        yield "data: [DONE]\n\n"
        return
    finish = final.finish_reason if final else "stop"
    yield _chunk(completion_id, name, {}, finish)
    if (body.get("stream_options") or {}).get("include_usage") and final is not None:
        usage = {
            "prompt_tokens": final.prompt_tokens,
            "completion_tokens": final.completion_tokens,
            "total_tokens": final.prompt_tokens + final.completion_tokens,
        }
        yield f"data: {json.dumps({'id': completion_id, 'object': 'chat.completion.chunk', 'model': name, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


def serve(
    model: str | None = None,
    *,
    adapters: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    served_name: str | None = None,
    max_batch: int = 64,
    log_level: str = "warning",
) -> None:
    """Load the model (and adapters) and serve it until interrupted."""
    import uvicorn

    local = LocalModel(model, adapters=adapters, device=device, max_batch=max_batch)
    app = create_app(local, served_name=served_name, max_batch=max_batch)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
