"""The session server under a hostile or careless client (issue 13, finding 11), on real servers.

Slow headers and bodies are cut off, hung environment calls past four times the threads leave the
others served, a full server seats new clients in idle seats or answers 503 with Retry-After, and
every client mistake (a 100,000-deep body, seed -1, a 4,300-digit task id, unknown factory kwargs)
is a 4xx with its own code, never a 500 or a crash. Limits are small, set for each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from envhub.errors import CapacityError, StepTimeoutError
from envhub.runtime.client import AsyncRemoteEnv, RemoteEnv

ROOT = Path(__file__).resolve().parents[3]
ARITHMETIC = ROOT / "environments" / "arithmetic"
FAULTY = ROOT / "tests" / "fixtures" / "faulty"
ECHO = ROOT / "tests" / "fixtures" / "echo"

DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000


def raw(url: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=url.removeprefix("unix://")), base_url="http://t", timeout=10)


@contextlib.contextmanager
def server_process(folder: Path, sock: Path, *args: str):
    """``python -m envhub.runtime.server`` (what the runtimes start) on a Unix socket: a crash
    there is the server's, not the test's."""
    proc = subprocess.Popen([sys.executable, "-m", "envhub.runtime.server", str(folder), "--uds", str(sock), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    url = f"unix://{sock}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError), raw(url) as http:
                if http.get("/healthz").status_code == 200:
                    break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_client_error(answer: httpx.Response, code: str) -> None:
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert answer.json()["error"]["code"] == code, answer.text[:300]


def test_client_mistakes_are_4xx_never_500(tmp_path):
    with server_process(ARITHMETIC, tmp_path / "env.sock") as (url, proc), raw(url) as http:
        sid = http.post("/v1/sessions", json={}).json()["session"]
        reset = f"/v1/sessions/{sid}/reset"
        for deep in (DEEP_OBJECT, DEEP_ARRAY):  # one of them crashed the parser (and the process) outright
            assert_client_error(http.post(reset, content=deep), "bad_request")
            assert_client_error(http.post(reset, content=b'{"options": ' + deep + b"}"), "bad_request")
            assert_client_error(http.post("/v1/batch", content=b'{"calls": ' + deep + b"}"), "bad_request")
            assert_client_error(http.post("/reset", content=deep), "bad_request")  # OpenEnv's routes
            assert http.post("/mcp", content=deep).json()["error"]["code"] == -32700  # JSON-RPC's parse error
        assert proc.poll() is None
        for seed in (-1, 2**64):
            answer = http.post(reset, json={"seed": seed})
            assert_client_error(answer, "bad_request")
            assert "seed" in answer.json()["error"]["message"]
            assert_client_error(http.post("/reset", json={"seed": seed}), "bad_request")
        for task_id in ("easy-" + "1" * 4300, int("1" * 4300)):
            answer = http.post(reset, content=json.dumps({"options": {"task_id": task_id}}).encode())
            assert_client_error(answer, "invalid_option")
            assert answer.json()["error"]["fields"]["option"] == "task_id"
        assert_client_error(http.post(reset, json={"options": {"task_id": ["easy-1"]}}), "invalid_option")
        answer = http.post("/v1/sessions", json={"kwargs": {"colour": "red"}})
        assert_client_error(answer, "invalid_option")
        assert "colour" in answer.json()["error"]["message"]
        assert_client_error(http.post("/v1/sessions", json={"kwargs": {"level": [[1]]}}), "invalid_option")
        # ... and the server still serves
        assert http.post(reset, json={"seed": 0}).status_code == 200
        assert http.post(reset, json={"options": {"task_id": "easy-7"}}).status_code == 200
        assert proc.poll() is None


def _unix(url: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(url.removeprefix("unix://"))
    conn.settimeout(5)
    return conn


def _closed_by_server(conn: socket.socket) -> bytes:
    """What the server sent before closing ``conn`` (raises socket.timeout if it keeps it open)."""
    got = b""
    while True:
        piece = conn.recv(65536)
        if not piece:
            return got
        got += piece


def test_slow_headers_and_silent_connections_are_closed(serve_env):
    _, url = serve_env(ECHO, header_timeout_s=0.5)
    silent = [_unix(url) for _ in range(50)]
    trickling = [_unix(url) for _ in range(50)]
    start = time.monotonic()
    for conn in trickling:
        conn.sendall(b"POST /v1/sessions HTTP/1.1\r\nhost: t\r\n")
    for _ in range(3):  # a header line now and then: no request ever completes
        time.sleep(0.2)
        for conn in trickling:
            with contextlib.suppress(OSError):
                conn.sendall(b"x-slow: 1\r\n")
    with raw(url) as http:  # meanwhile others are served
        assert http.post("/v1/sessions", json={}).status_code == 201
    for conn in silent + trickling:
        assert _closed_by_server(conn) == b""
        conn.close()
    assert time.monotonic() - start < 4.0
    # a kept-alive connection waits for its next request as before (uvicorn's keep-alive timeout),
    # and that request's headers have the same deadline once its first bytes arrive
    conn = _unix(url)
    conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
    assert b"200 OK" in conn.recv(65536)
    time.sleep(0.8)
    conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
    assert b"200 OK" in conn.recv(65536)
    conn.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert _closed_by_server(conn) == b""
    conn.close()


def test_bodies_that_never_finish_time_out_with_408(serve_env):
    _, url = serve_env(ECHO, body_timeout_s=0.5)
    with raw(url) as http:
        sid = http.post("/v1/sessions", json={}).json()["session"]
    stalled = []
    for i in range(60):
        conn = _unix(url)
        path = ["/v1/sessions", f"/v1/sessions/{sid}/step", "/v1/batch", "/reset", "/mcp"][i % 5]
        conn.sendall(f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n".encode()
                     + b'{"action": "')  # fmt: skip
        stalled.append(conn)
    start = time.monotonic()
    with raw(url) as http:  # meanwhile others are served
        assert http.post(f"/v1/sessions/{sid}/reset", json={}).status_code == 200
    for conn in stalled:
        answer = _closed_by_server(conn)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"]["code"] == "request_timeout"
        conn.close()
    assert time.monotonic() - start < 4.0


def test_hung_calls_past_four_times_the_threads_leave_the_others_served(serve_env):
    server, url = serve_env(FAULTY, step_timeout_s=0.3, threads=2, max_stuck_calls=12)

    async def main() -> float:
        envs = await asyncio.gather(*(AsyncRemoteEnv.open(url, batch=False) for _ in range(10)))
        await asyncio.gather(*(e.reset(seed=0) for e in envs))
        for pair in range(0, 10, 2):  # two at a time: both start, both time out, both stay stuck
            hung = await asyncio.gather(*(e.step("sleep:4") for e in envs[pair : pair + 2]), return_exceptions=True)
            assert all(isinstance(h, StepTimeoutError) for h in hung), hung
        start = time.monotonic()
        fresh = await AsyncRemoteEnv.open(url, batch=False)  # open, reset and step: all need a thread
        await fresh.reset(seed=0)
        obs, *_ = await fresh.step("anyone there?")
        assert obs[-1]["content"] == "echo: anyone there?"
        await envs[0].reset(seed=1)  # an abandoned session starts over on a fresh instance
        took = time.monotonic() - start
        assert server._hung == 10  # more than 4 x threads, each still holding its thread
        await asyncio.gather(*(e.close() for e in [*envs, fresh]))
        return took

    assert asyncio.run(main()) < 1.0


def test_stuck_calls_past_the_bound_answer_503_with_retry_after_until_they_return(serve_env):
    server, url = serve_env(FAULTY, step_timeout_s=0.3, threads=1, max_stuck_calls=2)
    envs = [RemoteEnv(url) for _ in range(3)]
    for env in envs:
        env.reset(seed=0)
    for env in envs[:2]:
        with pytest.raises(StepTimeoutError):
            env.step("sleep:2")
    with raw(url) as http:
        health = http.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert int(health.headers["retry-after"]) >= 1
        refused = http.post("/v1/sessions", json={})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "capacity"
        assert "stuck" in refused.json()["error"]["message"] and int(refused.headers["retry-after"]) >= 1
    with pytest.raises(CapacityError):
        envs[2].step("hi")
    deadline = time.monotonic() + 5
    while server.degraded and time.monotonic() < deadline:  # the stuck calls return: their threads come back
        time.sleep(0.1)
    with raw(url) as http:
        assert http.get("/healthz").status_code == 200
    assert envs[2].step("hi")[0][-1]["content"] == "echo: hi"
    for env in envs:
        env.close()


def test_a_full_server_seats_new_clients_in_idle_seats_or_says_when_to_retry(serve_env):
    server, url = serve_env(ECHO, max_sessions=3, evict_idle_s=1.0)
    with raw(url) as http:
        held = [http.post("/v1/sessions", json={}).json()["session"] for _ in range(3)]
        refused = http.post("/v1/sessions", json={})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "capacity"
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        time.sleep(0.6)
        http.post(f"/v1/sessions/{held[0]}/reset", json={})  # in use: keeps its seat
        time.sleep(0.6)
        seated = http.post("/v1/sessions", json={})
        assert seated.status_code == 201
        assert held[0] in server.sessions and held[1] not in server.sessions  # the least recently used went
        gone = http.post(f"/v1/sessions/{held[1]}/reset", json={})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_session"
