"""The session server and the remote client: the Env contract, deltas, errors, limits, reaping."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from gymnasium.utils.env_checker import check_env

import envhub
from envhub.identity.artifact import folder_digest
from envhub.runtime.client import AsyncRemoteEnv, RemoteEnv, RemoteRubric
from envhub.errors import (
    BodyTooLargeError,
    CapacityError,
    EnvironmentFailure,
    EpisodeEndedError,
    InvalidActionError,
    InvalidOptionError,
    RuntimeDiedError,
    SessionNotFoundError,
    StepTimeoutError,
    TaskNotFoundError,
)
from envhub.runtime.server.protocol import CODES

ROOT = Path(__file__).resolve().parents[3]
ARITHMETIC = ROOT / "environments" / "arithmetic"
GUESS = ROOT / "environments" / "guess-number"
FAULTY = ROOT / "tests" / "fixtures" / "faulty"
ECHO = ROOT / "tests" / "fixtures" / "echo"


def raw(url: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=url.removeprefix("unix://")), base_url="http://t", timeout=10)


def test_info_identity_and_openapi(serve_env):
    server, url = serve_env(ARITHMETIC)
    with raw(url) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        info = http.get("/v1/info").json()
        doc = http.get("/openapi.json").json()
    assert info["identity"]["digest"] == folder_digest(ARITHMETIC)
    assert info["manifest"]["name"] == "arithmetic"
    assert info["rubric"]["hash"].startswith("sha256:")
    assert doc["openapi"].startswith("3.")
    assert set(doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]) == set(CODES)


def test_remote_env_is_the_same_env_as_in_process(serve_env):
    _, url = serve_env(ARITHMETIC)
    remote = RemoteEnv(url, kwargs={"level": "medium"})
    local = envhub.make(ARITHMETIC, level="medium")
    assert remote.identity.to_dict() == local.identity.to_dict()
    assert remote.max_turns == local.max_turns
    assert remote.manifest == local.manifest
    assert isinstance(remote.rubric, RemoteRubric)
    assert remote.rubric.hash == local.rubric.hash and remote.rubric.describe() == local.rubric.describe()
    for seed in range(5):
        assert remote.reset(seed=seed) == local.reset(seed=seed)
        answer = f"<answer>{seed}</answer>"
        assert remote.step(answer) == local.step(answer)
    check_env(remote, skip_render_check=True)
    remote.close()


def test_multi_turn_episode_matches_and_sends_deltas(serve_env):
    server, url = serve_env(GUESS)
    remote = RemoteEnv(url)
    local = envhub.make(GUESS)
    assert remote.reset(seed=3) == local.reset(seed=3)
    for guess in ["50", "25", "75", "60", "40", "10", "90"]:
        got, want = remote.step(guess), local.step(guess)
        assert got == want
        if got[2] or got[3]:
            assert "rubric" in got[4]
            break
    # On the wire, a step carries only what follows the action, whatever the conversation's length.
    with raw(url) as http:
        sid = http.post("/v1/sessions", json={}).json()["session"]
        http.post(f"/v1/sessions/{sid}/reset", json={"seed": 1})
        sizes = []
        for guess in ["50", "25", "75"]:
            answer = http.post(f"/v1/sessions/{sid}/step", json={"action": guess})
            body = answer.json()
            assert "append" in body and "observation" not in body
            sizes.append(len(answer.content))
        assert max(sizes) - min(sizes) < 200


def test_errors_map_to_the_in_process_classes(serve_env):
    _, url = serve_env(FAULTY)
    env = RemoteEnv(url)
    with pytest.raises(EpisodeEndedError):
        env.step("hello")  # before reset
    with pytest.raises(InvalidOptionError) as exc:
        env.reset(options={"colour": "red"})
    assert exc.value.option == "colour"
    with pytest.raises(TaskNotFoundError) as exc:
        env.reset(options={"task_id": "t9"})
    assert exc.value.task_id == "t9" and "t0" in exc.value.suggestions or "t1" in exc.value.suggestions
    with pytest.raises(EnvironmentFailure) as exc:
        env.reset(options={"task_id": "raise"})
    assert exc.value.where == "reset" and "initial messages asked to fail" in str(exc.value)
    env.reset(seed=0)
    with pytest.raises(InvalidActionError):
        env.step(42)
    obs, *_ = env.step("hi")
    assert obs[-1] == {"role": "user", "content": "echo: hi"}
    with pytest.raises(EnvironmentFailure) as exc:
        env.step("raise")
    assert exc.value.where == "respond" and exc.value.env == "tests/faulty@1.0.0"
    with pytest.raises(EpisodeEndedError):
        env.step("hi")
    obs, reward, terminated, truncated, info = (env.reset(seed=1), *env.step("done"))[1:]
    assert terminated and reward == 1.0 and info["rubric"]["criteria"]["said_done"]["score"] == 1.0
    # An action that is not a str, sent raw, gets the same code.
    with raw(url) as http:
        sid = http.post("/v1/sessions", json={}).json()["session"]
        http.post(f"/v1/sessions/{sid}/reset", json={})
        answer = http.post(f"/v1/sessions/{sid}/step", json={"action": 42})
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_action"
        bad = http.post(f"/v1/sessions/{sid}/step", content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
        missing = http.get("/v2/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    env.close()


def test_a_hung_step_times_out_without_blocking_other_sessions(serve_env):
    _, url = serve_env(FAULTY, step_timeout_s=0.5)
    hung, other = RemoteEnv(url), RemoteEnv(url)
    hung.reset(seed=0)
    other.reset(seed=0)
    latencies = []
    failure: list[BaseException] = []

    def hang() -> None:
        try:
            hung.step("sleep:3")
        except BaseException as exc:  # noqa: BLE001 - the test looks at it below
            failure.append(exc)

    thread = threading.Thread(target=hang)
    start = time.monotonic()
    thread.start()
    time.sleep(0.05)
    for i in range(20):
        t = time.monotonic()
        _, _, terminated, truncated, _ = other.step(f"ping {i}")
        latencies.append(time.monotonic() - t)
        if terminated or truncated:
            other.reset()
    thread.join(5)
    assert max(latencies) < 0.25, latencies
    assert isinstance(failure[0], StepTimeoutError) and failure[0].timeout_s == 0.5
    assert time.monotonic() - start < 2.0
    with pytest.raises(EpisodeEndedError, match="step timeout"):
        hung.step("hi")
    obs, _ = hung.reset(seed=0)  # a fresh instance replaces the abandoned one
    assert hung.step("hi")[0][-1]["content"] == "echo: hi"
    hung.close()
    other.close()


def test_body_size_is_bounded(serve_env):
    _, url = serve_env(ECHO, max_body_bytes=64 * 1024)
    env = RemoteEnv(url)
    env.reset()
    with pytest.raises(BodyTooLargeError) as exc:
        env.step("x" * 100_000)
    assert exc.value.limit == 64 * 1024
    with raw(url) as http:  # a chunked body, with no Content-Length to refuse early
        sid = env.session_id
        chunks = (b'{"action": "' + b"y" * 70_000 + b'"}' for _ in range(1))
        answer = http.post(f"/v1/sessions/{sid}/step", content=chunks)
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"
    assert env.step("small")[0][-1]["content"] == "small"


def test_capacity_and_unknown_sessions(serve_env):
    _, url = serve_env(ECHO, max_sessions=2)
    a, b = RemoteEnv(url), RemoteEnv(url)
    with pytest.raises(CapacityError) as exc:
        RemoteEnv(url)
    assert exc.value.limit == 2
    a.close()
    c = RemoteEnv(url)  # a closed session frees its seat
    with raw(url) as http:
        gone = http.delete(f"/v1/sessions/{a.session_id}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_session"
    b.close()
    c.close()


def test_idle_sessions_are_reaped(serve_env):
    server, url = serve_env(ECHO, idle_timeout_s=0.3)
    env = RemoteEnv(url)
    env.reset()
    env.step("hello")
    deadline = time.monotonic() + 5
    while server.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.sessions
    with pytest.raises(SessionNotFoundError):
        env.step("still there?")
    obs, _ = env.reset()  # reset opens a new session transparently
    assert env.step("back")[0][-1]["content"] == "back"
    env.close()


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-by-one"])
def test_async_clients_reopen_a_reaped_session_at_reset(serve_env, batch):
    server, url = serve_env(ECHO, idle_timeout_s=0.3)

    async def main() -> None:
        env = await AsyncRemoteEnv.open(url, batch=batch)
        await env.reset()
        await env.step("hello")
        first = env.session_id
        deadline = time.monotonic() + 5
        while server.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not server.sessions
        with pytest.raises(SessionNotFoundError):
            await env.step("still there?")
        await env.reset()  # reset opens a new session transparently
        assert env.session_id != first
        assert (await env.step("back"))[0][-1]["content"] == "back"
        await env.close()

    asyncio.run(main())
    assert not server.sessions  # close() ended the new session too


def test_async_client_many_concurrent_sessions(serve_env):
    _, url = serve_env(ECHO)

    async def main() -> list[float]:
        envs = await asyncio.gather(*(AsyncRemoteEnv.open(url) for _ in range(50)))

        async def episode(i: int, env: AsyncRemoteEnv) -> float:
            await env.reset(seed=i)
            for turn in range(5):
                obs, *_ = await env.step(f"{i}-{turn}")
                assert obs[-1]["content"] == f"{i}-{turn}"
            obs, reward, terminated, truncated, info = await env.step("stop")
            assert terminated and len(obs) == 12
            return reward

        rewards = await asyncio.gather(*(episode(i, e) for i, e in enumerate(envs)))
        await asyncio.gather(*(e.close() for e in envs))
        return rewards

    assert asyncio.run(main()) == [1.0] * 50


def test_cli_serve_on_a_port(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from envhub.cli import main; main()", "serve", str(ECHO), "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        env = RemoteEnv(url)
        env.reset()
        assert env.step("over tcp")[0][-1]["content"] == "over tcp"
        env.close()

        async def the_async_client_then_no_server() -> None:
            env = await AsyncRemoteEnv.open(url)
            await env.reset(seed=0)
            assert (await env.step("over tcp"))[0][-1]["content"] == "over tcp"
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)
            with pytest.raises(RuntimeDiedError, match=f"HTTP to http://127.0.0.1:{port}: cannot connect"):
                await env.step("anyone?")
            with pytest.raises(RuntimeDiedError):  # no runtime to lend a new server: the episode stays dead
                await env.reset()
            await env.close()

        asyncio.run(the_async_client_then_no_server())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"serving tests/echo@1.0.0" in err, err


def test_protocol_errors_are_json_with_stable_codes(serve_env):
    _, url = serve_env(ECHO)
    with raw(url) as http:
        answer = http.post("/v1/sessions", json={"kwargs": {"nope": 1}})  # the caller's mistake: 422
        assert answer.status_code == 422
        error = answer.json()["error"]
        assert error["code"] == "invalid_option" and "nope" in error["message"] and error["fields"]["option"] == "nope"
        answer = http.post("/v1/sessions/abc/reset", json={"seed": "x"})
        assert answer.status_code == 400 and json.loads(answer.content)["error"]["code"] == "bad_request"


def test_a_10_mb_action_is_refused_and_the_server_keeps_serving(serve_env):
    _, url = serve_env(ECHO)  # the default limit: 8 MiB
    env, other = RemoteEnv(url), RemoteEnv(url)
    env.reset()
    other.reset()
    big = "x" * (10 * 1024 * 1024)
    with pytest.raises(BodyTooLargeError) as exc:
        env.step(big)  # refused by the client, which knows the server's limit
    assert exc.value.limit == 8 * 1024 * 1024
    with raw(url) as http:  # and by the server, which reads the body through before answering
        answer = http.post(f"/v1/sessions/{env.session_id}/step", json={"action": big})
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"
    assert env.step("small")[0][-1]["content"] == "small"
    assert other.step("fine")[0][-1]["content"] == "fine"


def test_a_thousand_abandoned_sessions_are_reaped(serve_env):
    server, url = serve_env(ECHO, idle_timeout_s=1.0)
    with raw(url) as http:
        opened = 0
        for i in range(1000):
            answer = http.post("/v1/sessions", json={})
            assert answer.status_code == 201, answer.text
            opened += 1
            if i % 10 == 0:
                http.post(f"/v1/sessions/{answer.json()['session']}/reset", json={"seed": i})
        assert opened == 1000 and len(server.sessions) > 1
        keeper = RemoteEnv(url)
        keeper.reset()
        deadline = time.monotonic() + 15
        while len(server.sessions) > 1 and time.monotonic() < deadline:
            keeper.step("still using mine")  # an active session is never reaped
            time.sleep(0.2)
        assert list(server.sessions) == [keeper.session_id]
        assert http.get("/healthz").json()["sessions"] == 1
    keeper.close()


def test_garbage_collected_clients_close_their_sessions(serve_env):
    import gc

    server, url = serve_env(ECHO)
    for _ in range(20):
        RemoteEnv(url).reset()  # never closed: dropped at once
    gc.collect()
    deadline = time.monotonic() + 5
    while server.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.sessions


def test_batched_steps_answer_one_by_one_and_a_hung_step_delays_only_itself(serve_env):
    _, url = serve_env(FAULTY, step_timeout_s=1.0)

    async def main() -> tuple[list[float], BaseException]:
        envs = await asyncio.gather(*(AsyncRemoteEnv.open(url) for _ in range(8)))
        await asyncio.gather(*(e.reset(seed=0) for e in envs))
        hung = asyncio.ensure_future(envs[0].step("sleep:5"))  # batched with the others' steps
        latencies = []
        for turn in range(3):
            for env in envs[1:]:
                await env.reset(seed=turn)
            start = time.monotonic()
            results = await asyncio.gather(*(e.step(f"turn {turn}") for e in envs[1:]))
            latencies.append(time.monotonic() - start)
            assert all(r[0][-1]["content"] == f"echo: turn {turn}" for r in results)
        error = await asyncio.gather(hung, return_exceptions=True)
        await asyncio.gather(*(e.close() for e in envs))
        return latencies, error[0]

    latencies, error = asyncio.run(main())
    assert max(latencies) < 0.5, latencies
    assert isinstance(error, StepTimeoutError)


def test_batch_calls_fail_one_by_one(serve_env):
    _, url = serve_env(ECHO)
    with raw(url) as http:
        sid = http.post("/v1/sessions", json={}).json()["session"]
        calls = [
            {"op": "reset", "session": sid, "seed": 1},
            {"op": "step", "session": "nope", "action": "x"},
            {"op": "jump", "session": sid},
        ]
        answer = http.post("/v1/batch", json={"calls": calls})
        assert answer.status_code == 200
        lines = {line["i"]: line for line in map(json.loads, answer.text.splitlines())}
        assert lines[0]["status"] == 200 and lines[0]["body"]["observation"][0]["content"] == "Say something."
        assert lines[1]["status"] == 404 and lines[1]["body"]["error"]["code"] == "unknown_session"
        assert lines[2]["status"] == 400 and lines[2]["body"]["error"]["code"] == "bad_request"
        empty = http.post("/v1/batch", json={"calls": []})
        assert empty.status_code == 400 and empty.json()["error"]["code"] == "bad_request"


def test_more_hung_steps_than_threads_do_not_stall_the_server(serve_env):
    server, url = serve_env(FAULTY, step_timeout_s=0.3, threads=4)

    async def main() -> float:
        envs = await asyncio.gather(*(AsyncRemoteEnv.open(url) for _ in range(7)))
        await asyncio.gather(*(e.reset(seed=0) for e in envs))
        hung = await asyncio.gather(*(e.step("sleep:4") for e in envs[:6]), return_exceptions=True)
        assert all(isinstance(h, StepTimeoutError) for h in hung), hung
        start = time.monotonic()
        obs, *_ = await envs[6].step("anyone there?")
        assert obs[-1]["content"] == "echo: anyone there?"
        return time.monotonic() - start

    assert asyncio.run(main()) < 1.0
    with raw(url) as http:
        assert http.get("/healthz").json()["status"] == "ok"


@pytest.mark.parametrize("own_step", [False, True], ids=["sdk-step", "own-step"])
def test_a_rewritten_history_is_sent_whole_and_in_place_edits_fail(serve_env, own_step):
    _, url = serve_env(FAULTY)
    remote = RemoteEnv(url, kwargs={"own_step": own_step})
    local = envhub.make(FAULTY, own_step=own_step)
    assert remote.reset(seed=0) == local.reset(seed=0)
    for action in ["hi", "rewrite", "hi", "rewrite"]:
        assert remote.step(action) == local.step(action)
    with raw(url) as http:
        sid = http.post("/v1/sessions", json={"kwargs": {"own_step": own_step}}).json()["session"]
        http.post(f"/v1/sessions/{sid}/reset", json={"seed": 0})
        kinds = []
        for action in ["hi", "rewrite", "hi"]:
            body = http.post(f"/v1/sessions/{sid}/step", json={"action": action}).json()
            kinds.append("append" if "append" in body else "observation")
        assert kinds == ["append", "observation", "append"]
        failed = http.post(f"/v1/sessions/{sid}/step", json={"action": "edit"})
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "environment_failure"
    assert "cannot be changed in place" in failed.json()["error"]["message"]
    remote.close()
