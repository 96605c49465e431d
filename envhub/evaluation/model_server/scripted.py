"""A scripted OpenAI-compatible chat endpoint: answers by a Python function, fails on request.

For tests (every fault an evaluation or a judge must survive, on a real socket) and benchmarks (an
endpoint of known, fixed cost, so that a harness's own overhead can be measured):

    server = ScriptedEndpoint(answer=lambda messages: "<answer>4</answer>")
    server.faults.extend(["429", "500", "timeout", "malformed", "empty"])   # consumed one per request
    with serve_in_thread(server.app) as base_url:                          # http://127.0.0.1:PORT/v1
        ...

Faults: ``"400"``, ``"429"`` and ``"500"`` (an error status; 429 with ``Retry-After: 0``), ``"timeout"``
(sleeps ``hang_s`` before answering), ``"malformed"`` (status 200 and a body that is not JSON),
``"noscore"`` (a valid completion whose content is JSON without a score), ``"empty"`` (a completion
with no choices).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["ScriptedEndpoint", "serve_in_thread"]


class ScriptedEndpoint:
    """An endpoint whose answers come from ``answer(messages) -> str`` (or ``answer(messages, body)``)."""

    def __init__(
        self,
        answer: Callable[..., str] | None = None,
        *,
        model: str = "scripted",
        latency_s: float = 0.0,
        hang_s: float = 30.0,
    ) -> None:
        self.answer = answer or (lambda messages: "ok")
        self.model = model
        self.latency_s = latency_s
        self.hang_s = hang_s
        self.faults: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.busy_s = 0.0  # time spent inside the handler, summed over requests
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/stats", self._stats, methods=["GET", "DELETE"]),
            ]
        )

    async def _models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "test"}]})

    async def _stats(self, request: Request) -> JSONResponse:
        """Requests served and seconds spent in the handler (DELETE resets both): for benchmarks."""
        stats = {"requests": len(self.requests), "busy_s": self.busy_s}
        if request.method == "DELETE":
            with self._lock:
                self.requests.clear()
                self.busy_s = 0.0
        return JSONResponse(stats)

    async def _chat(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await request.json()
            with self._lock:
                self.requests.append(body)
                fault = self.faults.pop(0) if self.faults else None
            if fault == "429":
                return JSONResponse({"error": {"message": "rate limited"}}, status_code=429, headers={"Retry-After": "0"})
            if fault == "500":
                return JSONResponse({"error": {"message": "boom"}}, status_code=500)
            if fault == "400":
                return JSONResponse({"error": {"message": "unsupported parameter"}}, status_code=400)
            if fault == "timeout":
                await asyncio.sleep(self.hang_s)
            if fault == "malformed":
                return Response(b'{"choices": [{"message": ', media_type="application/json")
            if fault == "empty":
                return JSONResponse({"id": "x", "object": "chat.completion", "choices": []})
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if fault == "noscore":
                text = json.dumps({"verdict": "good", "reason": "no score given"})
            else:
                try:
                    text = self.answer(body["messages"], body)
                except TypeError:
                    text = self.answer(body["messages"])
            if body.get("stream"):  # OpenAI's server-sent events: the whole text in one chunk, then the end
                return Response(_sse(f"chatcmpl-{len(self.requests)}", body.get("model", self.model), text), media_type="text/event-stream")
            return JSONResponse(
                {
                    "id": f"chatcmpl-{len(self.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", self.model),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": len(text.split()), "total_tokens": len(text.split())},
                }
            )
        finally:
            self.busy_s += time.perf_counter() - started


def _sse(completion_id: str, model: str, text: str) -> bytes:
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    usage = {"prompt_tokens": 0, "completion_tokens": len(text.split()), "total_tokens": len(text.split())}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage},
    ]
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", tls: tuple[str, str] | None = None) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the ``/v1`` base URL.

    ``tls``: (certificate file, key file) to serve https."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    certfile, keyfile = tls or (None, None)
    config = uvicorn.Config(app, log_level="error", lifespan="on", timeout_keep_alive=30, backlog=2048,
                            ssl_certfile=certfile, ssl_keyfile=keyfile)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"{'https' if tls else 'http'}://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
