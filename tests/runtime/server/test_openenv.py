"""OpenEnv's protocol on `envhub serve`, played by OpenEnv's own clients (the `openenv` package).

Every bundled environment's episodes, through OpenEnv's sync and async `GenericEnvClient`, give the
same observations, rewards and rubric breakdowns as `inprocess` for the same seed and actions.
Servers are real `envhub serve` processes on 127.0.0.1; the docker runtime's container is reached
through a byte-for-byte TCP relay to its Unix socket (OpenEnv's client speaks TCP only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from loopback import serve, wait_healthy

import envhub

openenv_core = pytest.importorskip("openenv.core", reason="OpenEnv's clients: pip install 'envhub[interop]'")
from openenv.core import GenericEnvClient  # noqa: E402
from openenv.core.mcp_client import MCPToolClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
BUNDLED = sorted(p.name for p in (ROOT / "environments").iterdir() if (p / "envhub.toml").is_file())
FAULTY = ROOT / "tests" / "fixtures" / "faulty"
WRONG = "I am not sure."


def says_healthy(response: httpx.Response) -> bool:
    return response.json() == {"status": "healthy"}  # OpenEnv's health answer, not only a 200


def envhub_serve(target: str | Path, home: Path, *args: str) -> contextlib.AbstractContextManager[str]:
    """`envhub serve TARGET` in a child process on a loopback port; yields its base URL."""
    cmd = [sys.executable, "-m", "envhub", "serve", str(target), "--log-level", "warning", *args]
    return serve(cmd, cwd=ROOT, env={**os.environ, "ENVHUB_HOME": str(home)}, healthy=says_healthy)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """`servers(name, *args)`: the URL of a running `envhub serve`, one per (name, args), module-wide."""
    home = tmp_path_factory.mktemp("envhub-home-serve")
    running: dict[tuple, str] = {}
    with contextlib.ExitStack() as stack:

        def get(target, *args: str) -> str:
            key = (str(target), *args)
            if key not in running:
                running[key] = stack.enter_context(envhub_serve(target, home, *args))
            return running[key]

        yield get


# --- the same episodes as inprocess -----------------------------------------------------------------


def _plain(value):
    """What a value reads as after a JSON round trip (tuples as lists, frozen messages as dicts)."""
    return json.loads(json.dumps(value))


def inprocess_episode(name: str, seed: int, policy: str) -> dict:
    """An episode played in this process: its actions, observations, rewards and infos."""
    env = envhub.make(name)
    observation, info = env.reset(seed=seed)
    played = {"reset": _plain(observation), "reset_info": _plain(info), "actions": [], "steps": []}
    done = False
    while not done:
        action = env.unwrapped.reference_action(env.unwrapped.episode) if policy == "reference" else WRONG
        observation, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        played["actions"].append(action)
        played["steps"].append({"conversation": _plain(observation), "reward": reward, "terminated": terminated,
                                "truncated": truncated, "info": _plain(info)})
    env.close()
    return played


def check_replay(played: dict, reset, steps) -> None:
    """An OpenEnv replay (its reset result and step results) against the inprocess episode."""
    assert reset.observation["messages"] == played["reset"] and reset.observation["full"] is True
    assert reset.reward is None and reset.done is False
    assert reset.metadata == played["reset_info"]
    conversation = list(reset.observation["messages"])
    assert len(steps) == len(played["steps"])
    for action, result, expected in zip(played["actions"], steps, played["steps"]):
        messages = result.observation["messages"]
        conversation = messages if result.observation["full"] else [*conversation, {"role": "assistant", "content": action}, *messages]
        assert conversation == expected["conversation"]
        assert result.reward == expected["reward"]
        assert result.done == (expected["terminated"] or expected["truncated"])
        info = result.metadata
        assert (info.pop("terminated"), info.pop("truncated")) == (expected["terminated"], expected["truncated"])
        assert info == expected["info"]
    assert "rubric" in steps[-1].metadata  # the breakdown of the reward, on the last step


@pytest.mark.parametrize("name", BUNDLED)
def test_sync_client_plays_every_bundled_environment_as_inprocess(servers, name):
    url = servers(name)
    for seed, policy in ((3, "reference"), (4, WRONG)):
        played = inprocess_episode(name, seed, policy)
        with GenericEnvClient(base_url=url).sync() as env:
            reset = env.reset(seed=seed)
            steps = [env.step({"message": action}) for action in played["actions"]]
            state = env.state()
        check_replay(played, reset, steps)
        assert state["step_count"] == len(played["actions"]) and state["done"] is True
        assert state["messages"] == played["steps"][-1]["conversation"]


@pytest.mark.parametrize("name", BUNDLED)
def test_async_client_plays_every_bundled_environment_as_inprocess(servers, name):
    url = servers(name)
    played = inprocess_episode(name, 11, "reference")

    async def play():
        async with GenericEnvClient(base_url=url) as env:
            reset = await env.reset(seed=11)
            steps = [await env.step({"message": action}) for action in played["actions"]]
            return reset, steps

    reset, steps = asyncio.run(play())
    check_replay(played, reset, steps)


def test_the_reference_reaches_the_rubric_total_as_reward(servers):
    played = inprocess_episode("calculator-tools", 5, "reference")
    with GenericEnvClient(base_url=servers("calculator-tools")).sync() as env:
        env.reset(seed=5)
        results = [env.step({"message": action}) for action in played["actions"]]
    last = results[-1]
    assert last.done and last.reward == pytest.approx(1.0) == last.metadata["rubric"]["total"]
    assert set(last.metadata["rubric"]["criteria"]) == {"correct", "tool_use", "efficiency"}


def test_concurrent_sessions_each_play_their_own_episode(servers):
    url = servers("guess-number")
    seeds = range(24)
    played = {seed: inprocess_episode("guess-number", seed, "reference") for seed in seeds}

    async def one(seed):
        async with GenericEnvClient(base_url=url) as env:
            reset = await env.reset(seed=seed)
            steps = []
            for action in played[seed]["actions"]:
                steps.append(await env.step({"message": action}))
                await asyncio.sleep(0)  # interleave the sessions' steps
            return reset, steps

    async def all_at_once():
        return await asyncio.gather(*(one(seed) for seed in seeds))

    for seed, (reset, steps) in zip(seeds, asyncio.run(all_at_once())):
        check_replay(played[seed], reset, steps)
    health = httpx.get(f"{url}/healthz").json()
    assert health["sessions"] == 0  # every WebSocket's session closed with it


def test_reset_options_and_the_same_seed_give_the_same_task(servers):
    with GenericEnvClient(base_url=servers("arithmetic")).sync() as env:
        first = env.reset(seed=7)
        again = env.reset(seed=7)
        assert first.observation == again.observation and first.metadata["task_id"] == again.metadata["task_id"]
        test_split = env.reset(seed=7, split="test")
        assert test_split.metadata["split"] == "test"
        by_id = env.reset(task_id=first.metadata["task_id"], episode_id="ep-1")
        assert by_id.observation["messages"] == first.observation["messages"]
        assert env.state()["episode_id"] == "ep-1"
        with pytest.raises(RuntimeError, match=r"invalid_option.*(code: VALIDATION_ERROR)"):
            env.reset(colour="blue")
        with pytest.raises(RuntimeError, match=r"task_not_found"):
            env.reset(task_id="no-such-task")
        with pytest.raises(RuntimeError, match=r"invalid_action.*(code: VALIDATION_ERROR)"):
            env.step({"text": "the wrong field"})
        with pytest.raises(RuntimeError, match=r"bad_request"):
            env.reset(seed="seven")
        assert env.step({"message": "<answer>0</answer>"}).done  # the session is still usable


# --- faults reach OpenEnv's client as its error ----------------------------------------------------


def test_an_environment_error_reaches_the_client_as_its_error(servers):
    with GenericEnvClient(base_url=servers(FAULTY)).sync() as env:
        env.reset(seed=0)
        with pytest.raises(RuntimeError, match=r"environment_failure: .*asked to raise.*\(code: EXECUTION_ERROR\)"):
            env.step({"message": "raise"})
        with pytest.raises(RuntimeError, match=r"episode_ended"):  # the failure ended the episode
            env.step({"message": "hello"})
        env.reset(seed=0)
        assert env.step({"message": "hello"}).observation["messages"] == [{"role": "user", "content": "echo: hello"}]


def test_a_step_timeout_reaches_the_client_as_its_error_not_a_hang(servers):
    with GenericEnvClient(base_url=servers(FAULTY), message_timeout_s=30).sync() as env:
        env.reset(seed=0)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"step_timeout: .*\(code: EXECUTION_ERROR\)"):
            env.step({"message": "sleep:8"})
        assert time.monotonic() - started < 5  # the manifest's step_timeout_s is 2
        env.reset(seed=1)  # a fresh instance for the next episode
        assert env.step({"message": "done"}).done


def test_the_error_frame_carries_envhub_error_body(servers):
    from websockets.sync.client import connect

    url = servers(FAULTY).replace("http://", "ws://") + "/ws"
    with connect(url) as ws:
        ws.send(json.dumps({"type": "reset", "data": {"seed": 0}, "request_id": "r1"}))
        assert json.loads(ws.recv())["request_id"] == "r1"
        ws.send(json.dumps({"type": "step", "data": {"message": "sleep:8"}, "request_id": "r2"}))
        frame = json.loads(ws.recv())
        assert frame["type"] == "error" and frame["request_id"] == "r2"
        data = frame["data"]
        assert data["code"] == "EXECUTION_ERROR" and data["status"] == 504
        assert data["error"]["code"] == "step_timeout"
        assert data["error"]["fields"]["timeout_s"] == 2.0 and data["error"]["fields"]["where"] == "step"
        ws.send("not json")
        assert json.loads(ws.recv())["data"]["code"] == "INVALID_JSON"
        ws.send(json.dumps({"type": "dance"}))
        assert json.loads(ws.recv())["data"]["code"] == "UNKNOWN_TYPE"


def test_a_receive_timeout_cannot_pair_a_late_answer_with_the_next_call(servers):
    # openenv issue #1143: the client drops a socket whose answer timed out; the server answers
    # on that socket only, and closes its session once the late answer has nowhere to go.
    url = servers(FAULTY)

    async def play():
        async with GenericEnvClient(base_url=url, message_timeout_s=0.5) as env:
            await env.reset(seed=0)
            with pytest.raises(asyncio.TimeoutError):
                await env.step({"message": "sleep:1.5"})
            reset = await env.reset(seed=1)  # a new socket, a new session
            step = await env.step({"message": "hello"})
            return reset, step

    reset, step = asyncio.run(play())
    assert reset.observation["full"] and reset.observation["messages"][0]["role"] == "system"
    assert step.observation["messages"] == [{"role": "user", "content": "echo: hello"}]
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/healthz").json()["sessions"] != 0:
        assert time.monotonic() < deadline, "the dropped socket's session was not closed"
        time.sleep(0.1)


def test_capacity_is_refused_with_openenv_code(servers):
    url = servers(FAULTY, "--max-sessions", "1")
    with GenericEnvClient(base_url=url).sync() as first:
        first.reset(seed=0)
        with GenericEnvClient(base_url=url).sync() as second:
            with pytest.raises(RuntimeError, match=r"capacity: .*\(code: CAPACITY_REACHED\)"):
                second.reset(seed=0)


# --- HTTP routes, MCP, and OpenEnv's own validation ------------------------------------------------


def test_health_metadata_schema_and_stateless_http(servers):
    import jsonschema

    url = servers("arithmetic")
    assert httpx.get(f"{url}/health").json() == {"status": "healthy"}
    meta = httpx.get(f"{url}/metadata").json()
    assert meta["name"] == "envhub/arithmetic" and meta["version"] == envhub.locate("arithmetic").manifest.version
    assert meta["author"] == "envhub" and "arithmetic" in meta["readme_content"].lower()
    schema = httpx.get(f"{url}/schema").json()
    reset = httpx.post(f"{url}/reset", json={"seed": 3}).json()
    jsonschema.validate(reset["observation"], schema["reset_observation"])
    jsonschema.validate({"message": "<answer>1</answer>"}, schema["action"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"text": "x"}, schema["action"])
    assert reset["observation"]["messages"] == inprocess_episode("arithmetic", 3, "reference")["reset"]
    step = httpx.post(f"{url}/step", json={"action": {"message": "hi"}})
    assert step.status_code == 409 and step.json()["error"]["code"] == "episode_ended"
    assert "session_id" in step.json()["detail"]
    assert httpx.get(f"{url}/state").json() == {"episode_id": None, "step_count": 0}


def test_http_episode_in_an_mcp_session(servers):
    url = servers("calculator-tools")
    played = inprocess_episode("calculator-tools", 2, "reference")
    created = httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "method": "openenv/session/create", "id": 1}).json()
    assert created["id"] == 1
    sid = created["result"]["session_id"]
    reset = httpx.post(f"{url}/reset", json={"seed": 2, "session_id": sid}).json()
    assert reset["observation"]["messages"] == played["reset"]
    for n, (action, expected) in enumerate(zip(played["actions"], played["steps"])):
        step = httpx.post(f"{url}/step", json={"action": {"message": action}, "session_id": sid, "request_id": f"q{n}"}).json()
        assert step["reward"] == expected["reward"] and step["metadata"]["request_id"] == f"q{n}"
    state = httpx.get(f"{url}/state", params={"session_id": sid}).json()
    assert state["messages"] == played["steps"][-1]["conversation"]
    closed = httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "method": "openenv/session/close",
                                            "params": {"session_id": sid}, "id": "c"}).json()
    assert closed == {"jsonrpc": "2.0", "id": "c", "result": {"session_id": sid, "closed": True}}
    gone = httpx.post(f"{url}/reset", json={"session_id": sid})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_session"
    bad = httpx.post(f"{url}/mcp", content=b"{not json").json()
    assert bad["error"]["code"] == -32700
    assert httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "method": "nope", "id": 9}).json()["error"]["code"] == -32601


def _first_call(played: dict) -> dict:
    """The reference's first action of calculator-tools, `<tool>{json}</tool>`, as the call it makes."""
    return json.loads(played["actions"][0].removeprefix("<tool>").removesuffix("</tool>"))


def test_mcp_tool_client_lists_and_calls_the_calculator(servers):
    from openenv.core.env_server.types import Action

    class Say(Action):
        message: str

    url = servers("calculator-tools")
    played = inprocess_episode("calculator-tools", 5, "reference")
    call = _first_call(played)

    async def play():
        async with MCPToolClient(base_url=url) as env:
            reset = await env.reset(seed=5)
            tools = await env.list_tools()
            result = await env.call_tool(call["name"], **call["arguments"])
            final = await env.step(Say(message=played["actions"][1]))
            state = await env.state()
            return reset, tools, result, final, state

    reset, tools, result, final, state = asyncio.run(play())
    assert [t.name for t in tools] == ["calculator"] and tools[0].input_schema["required"] == ["expression"]
    assert reset.observation.messages == played["reset"]
    assert result == played["steps"][0]["conversation"][-1]["content"]  # the calculator's answer
    assert final.done and final.reward == played["steps"][-1]["reward"] == pytest.approx(1.0)
    assert state.step_count == 2
    assert httpx.get(f"{url}/healthz").json()["sessions"] == 0  # the MCP session closed with the client


def test_mcp_actions_over_the_session_socket_and_mcp_over_websocket(servers):
    from websockets.sync.client import connect

    url = servers("calculator-tools")
    played = inprocess_episode("calculator-tools", 6, "reference")
    call = _first_call(played)
    with GenericEnvClient(base_url=url).sync() as env:
        env.reset(seed=6)
        assert [t["name"] for t in env.step({"type": "list_tools"}).observation["tools"]] == ["calculator"]
        called = env.step({"type": "call_tool", "tool_name": call["name"], "arguments": call["arguments"]})
        assert called.observation["tool_name"] == "calculator" and called.observation["error"] is None
        assert called.observation["result"]["data"] == played["steps"][0]["conversation"][-1]["content"]
        assert called.reward == played["steps"][0]["reward"]
        final = env.step({"message": played["actions"][1]})
        assert final.reward == played["steps"][1]["reward"]
    with connect(url.replace("http://", "ws://") + "/mcp") as ws:  # JSON-RPC only: the call starts the episode
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "tools/call", "id": 41,
                            "params": {"name": "calculator", "arguments": {"expression": "6*7"}}}))
        answer = json.loads(ws.recv())
        assert answer["id"] == 41 and answer["result"]["data"] == "42"
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "tools/call", "id": "x", "params": {"name": "sqrt"}}))
        answer = json.loads(ws.recv())
        assert answer["id"] == "x" and answer["error"]["code"] == -32602 and "Tool not found: sqrt" in answer["error"]["message"]
    direct = httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "method": "tools/call", "id": 2,
                                            "params": {"name": "calculator", "arguments": {"expression": "2**10"}}}).json()
    assert direct["result"]["data"] == "1024" and direct["result"]["reward"] == 0.0


def test_openenv_validate_accepts_a_running_envhub_serve(servers):
    from openenv.cli._validation import validate_running_environment

    report = validate_running_environment(servers("arithmetic"))
    failed = [c for c in report["criteria"] if not c["passed"]]
    assert report["passed"], failed
    assert report["mode"] == "simulation"


# --- the docker runtime's container -----------------------------------------------------------------


@contextlib.contextmanager
def tcp_relay(uds: str) -> Iterator[str]:
    """127.0.0.1:PORT relaying bytes both ways to the Unix socket ``uds``: OpenEnv's client needs TCP."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port_box: list[int] = []
    stop = asyncio.Event()

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_unix_connection(uds)
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_box.append(server.sockets[0].getsockname()[1])
        started.set()
        await stop.wait()
        server.close()
        await server.wait_closed()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{port_box[0]}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.mark.docker
@pytest.mark.parametrize("name", ["calculator-tools", "guess-number"])
def test_openenv_client_against_the_docker_runtime_container(docker_engine, name):
    from envhub.runtime.remote import pool_for

    pool = pool_for("docker", envhub.locate(name))
    lease = pool.lease()
    try:
        with tcp_relay(lease.uds) as url:
            wait_healthy(url, healthy=says_healthy)
            for seed in (1, 2):
                played = inprocess_episode(name, seed, "reference")
                with GenericEnvClient(base_url=url).sync() as env:
                    reset = env.reset(seed=seed)
                    steps = [env.step({"message": action}) for action in played["actions"]]
                check_replay(played, reset, steps)
    finally:
        lease.release()


@pytest.mark.docker
def test_faults_in_the_docker_container_reach_the_openenv_client(docker_engine):
    from envhub.runtime.remote import pool_for

    lease = pool_for("docker", envhub.locate(FAULTY)).lease()
    try:
        with tcp_relay(lease.uds) as url, GenericEnvClient(base_url=url).sync() as env:
            env.reset(seed=0)
            with pytest.raises(RuntimeError, match=r"environment_failure"):
                env.step({"message": "raise"})
            env.reset(seed=0)
            started = time.monotonic()
            with pytest.raises(RuntimeError, match=r"step_timeout"):
                env.step({"message": "sleep:8"})
            assert time.monotonic() - started < 5
    finally:
        lease.release()
