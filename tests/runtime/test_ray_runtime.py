"""The ray runtime on a real cluster of three nodes on 127.0.0.1 (a head, two workers): the Env
contract of inprocess, servers spread over the nodes, the fleet held within ``max_servers`` and
shrunk back to ``warm``, ``envhub train --runtime ray`` driving its episodes there, dead actors and
nodes end their episodes with RuntimeDiedError without
hanging, and nothing is left once the pools close."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import envhub  # noqa: E402
from envhub.errors import CapacityError, RuntimeDiedError  # noqa: E402
from envhub.runtime.pool import close_all_pools  # noqa: E402
from envhub.runtime.remote import pool_for  # noqa: E402
from envhub.runtime.ray_fleet import RayServer  # noqa: E402
from ray_test_cluster import Cluster, keep_ray_on_loopback  # noqa: E402

pytestmark = pytest.mark.slow  # a cluster start is ~10-40 s on this machine

ONE_SEAT = {"sessions_per_server": 1}
ACTIONS = ["<answer>7</answer>", "<answer>12</answer>"]


@pytest.fixture(scope="module")
def cluster():
    keep_ray_on_loopback()
    started = Cluster.start(workers=2)
    old = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = started.address  # envhub's runtime finds the cluster through it
    try:
        yield started
    finally:
        close_all_pools()
        ray.shutdown()
        if old is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = old
        started.stop()
        assert started.live_pids() == []


def _server(env) -> RayServer:
    server = env._lease.server
    assert isinstance(server, RayServer)
    return server


def _live_actors() -> list[dict]:
    from ray._private import state

    return [a for a in state.actors().values() if a["State"] != "DEAD"]


def test_episodes_match_inprocess_and_spread_over_the_nodes(cluster):
    local = envhub.make("arithmetic", level="hard")
    envs = [envhub.make("arithmetic", runtime="ray", runtime_options=ONE_SEAT, level="hard") for _ in range(4)]
    try:
        for seed, env in enumerate(envs):
            for episode in range(2):
                assert env.reset(seed=seed * 10 + episode) == local.reset(seed=seed * 10 + episode)
                assert env.step(ACTIONS[episode]) == local.step(ACTIONS[episode])
        assert envs[0].identity.to_dict() == local.identity.to_dict()
        workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}
        assert {_server(env).placed["node_id"] for env in envs} == workers  # SPREAD: every worker serves
    finally:
        for env in envs:
            env.close()

    async def one_async_episode():
        env = await envhub.make_async("arithmetic", runtime="ray", level="hard")
        try:
            return await env.reset(seed=3), await env.step(ACTIONS[0])
        finally:
            await env.close()

    assert asyncio.run(one_async_episode()) == (local.reset(seed=3), local.step(ACTIONS[0]))


def test_the_fleet_grows_to_max_servers_waits_and_shrinks_to_warm(cluster):
    # Unbounded, a third make would start a third actor; at max_servers=2 it waits lease_timeout_s
    # for a seat and then says which bound it hit.
    opts = {"sessions_per_server": 1, "max_servers": 2, "warm": 0, "idle_ttl_s": 1.0, "lease_timeout_s": 1.0}
    envs = [envhub.make("arithmetic", runtime="ray", runtime_options=opts) for _ in range(2)]
    pool = pool_for("ray", envhub.locate("arithmetic"))
    try:
        assert len({_server(env).placed["node_id"] for env in envs}) == 2 and len(pool.servers) == 2
        with pytest.raises(CapacityError, match="max_servers=2"):
            envhub.make("arithmetic", runtime="ray", runtime_options=opts)
        reused = _server(envs[0])
        envs[0].close()  # its seat comes free and stays warm for idle_ttl_s: the next make takes it
        envs[0] = envhub.make("arithmetic", runtime="ray", runtime_options=opts)
        assert _server(envs[0]) is reused and len(pool.servers) == 2
        assert envs[0].reset(seed=0) is not None
    finally:
        for env in envs:
            env.close()
    deadline = time.monotonic() + 30
    while (pool.servers or _live_actors()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pool.servers == [] and _live_actors() == [], "shrunk back to warm=0: every actor stopped"


def test_a_server_no_node_has_room_for_is_refused_in_words(cluster):
    # The two one-CPU workers hold four servers of arithmetic's [limits] cpus = 0.5; Ray keeps a
    # fifth actor pending, and the make says why rather than only that it timed out.
    opts = {"sessions_per_server": 1, "warm": 0, "idle_ttl_s": 0.0, "start_timeout_s": 15.0}
    envs = [envhub.make("arithmetic", runtime="ray", runtime_options=opts) for _ in range(4)]
    try:
        with pytest.raises(RuntimeDiedError, match=r"no Ray node started its actor within 15 s; each server asks for 0\.5 CPU"):
            envhub.make("arithmetic", runtime="ray", runtime_options=opts)
    finally:
        for env in envs:
            env.close()
    deadline = time.monotonic() + 30
    while _live_actors() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _live_actors() == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(server: RayServer, timeout_s: float = 60) -> None:
    """Until Ray reports the actor dead and its server has followed it (within seconds)."""
    deadline = time.monotonic() + timeout_s
    while (server.exit_reason() is None or _alive(server.placed["server_pid"])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Ray actor" in (server.exit_reason() or "") and not _alive(server.placed["server_pid"])


def _step_dies_quickly(env) -> float:
    started = time.monotonic()
    with pytest.raises(RuntimeDiedError):
        env.step(ACTIONS[0])
    return time.monotonic() - started


def test_envhub_train_runs_its_episodes_on_the_cluster(cluster, tmp_path):
    """`envhub train --runtime ray`: one CISPO step whose episodes ran in servers on the cluster."""
    out = tmp_path / "run"
    flags = ["--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "8", "--lora-r", "2", "--lora-alpha", "4",
             "--no-dynamic-sampling", "--on-hack", "off", "--no-progress", "--steps", "1"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "envhub", "train", "arithmetic", "--algo", "cispo", "--runtime", "ray",
         "--env-kwargs", "level=easy", "--output-dir", str(out), *flags],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    episodes = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(episodes) == 4 and not any(e.get("error") for e in episodes)
    provenance = json.loads((out / "provenance.json").read_text())
    assert [spec["runtime"] for spec in provenance["config"]["envs"]] == ["ray"]
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_a_killed_actor_ends_its_episode_and_is_replaced(cluster):
    local = envhub.make("arithmetic")
    env = envhub.make("arithmetic", runtime="ray", runtime_options=ONE_SEAT)
    try:
        env.reset(seed=1)
        dead = _server(env)
        os.kill(dead.placed["pid"], signal.SIGKILL)  # the actor's worker process, mid-episode
        _wait_gone(dead)
        assert _step_dies_quickly(env) < 30
        assert env.reset(seed=1) == local.reset(seed=1)  # a new actor took its place
        assert _server(env) is not dead and _server(env).placed["pid"] != dead.placed["pid"]
        assert env.step(ACTIONS[0]) == local.step(ACTIONS[0])
    finally:
        env.close()


def test_a_killed_raylet_ends_its_nodes_episodes_and_nothing_is_left(cluster):
    envs = [envhub.make("arithmetic", runtime="ray", runtime_options=ONE_SEAT) for _ in range(2)]
    try:
        for env in envs:
            env.reset(seed=0)
        node_id = _server(envs[0]).placed["node_id"]
        raylet = next(pid for pid in (node.raylet_pid() for node in cluster.workers)
                      if f"--node_id={node_id}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes())
        on_victim = [env for env in envs if _server(env).placed["node_id"] == node_id]
        os.kill(raylet, signal.SIGKILL)
        for env in on_victim:
            _wait_gone(_server(env))
            assert _step_dies_quickly(env) < 30
    finally:
        for env in envs:
            env.close()
    close_all_pools()
    deadline = time.monotonic() + 30
    while _live_actors() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _live_actors() == []
