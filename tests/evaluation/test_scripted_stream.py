"""The scripted endpoint answers `stream: true` with OpenAI's server-sent events (verifiers 0.4's
interception server streams every upstream request: benchmarks/eval_bench.py)."""

from __future__ import annotations

import json

import httpx

from envhub.evaluation.model_server.scripted import ScriptedEndpoint, serve_in_thread


def test_a_streamed_completion_is_one_chunk_then_the_end():
    endpoint = ScriptedEndpoint(lambda messages: "<answer>4</answer>")
    with serve_in_thread(endpoint.app) as base_url:
        body = {"model": "scripted", "messages": [{"role": "user", "content": "2+2?"}], "stream": True}
        response = httpx.post(f"{base_url}/chat/completions", json=body, timeout=10)
        plain = httpx.post(f"{base_url}/chat/completions", json={**body, "stream": False}, timeout=10)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 2
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "<answer>4</answer>"}
    assert chunks[1]["choices"][0]["finish_reason"] == "stop" and chunks[1]["usage"]["completion_tokens"] == 1
    assert plain.json()["choices"][0]["message"]["content"] == "<answer>4</answer>"
