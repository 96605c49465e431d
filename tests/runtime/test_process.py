"""The process runtime: a child server per pool, the Env contract unchanged, faults contained."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from gymnasium.utils.env_checker import check_env

import envhub
from envhub.runtime.client import RemoteEnv
from envhub.errors import (
    EnvironmentFailure,
    InvalidOptionError,
    RuntimeDiedError,
    StepTimeoutError,
)
from envhub.runtime.remote import pool_for

ROOT = Path(__file__).resolve().parents[2]
ARITHMETIC = ROOT / "environments" / "arithmetic"
FAULTY = ROOT / "tests" / "fixtures" / "faulty"


def test_process_env_keeps_the_contract():
    remote = envhub.make("arithmetic", runtime="process", level="hard")
    local = envhub.make("arithmetic", level="hard")
    assert isinstance(remote, RemoteEnv)
    assert remote.identity.to_dict() == local.identity.to_dict()
    assert remote.identity.digest and remote.identity.digest.startswith("sha256:")
    assert remote.rubric.hash == local.rubric.hash and remote.max_turns == local.max_turns
    for seed in range(3):
        assert remote.reset(seed=seed) == local.reset(seed=seed)
        assert remote.step("<answer>7</answer>") == local.step("<answer>7</answer>")
    check_env(remote, skip_render_check=True)
    remote.close()


def test_servers_are_pooled_and_kept_warm():
    opts = {"sessions_per_server": 2, "warm": 1, "idle_ttl_s": 0.2}
    envs = [envhub.make(ARITHMETIC, runtime="process", runtime_options=opts) for _ in range(3)]
    pool = pool_for("process", envhub.locate(ARITHMETIC))
    assert len(pool.servers) == 2 and sorted(s.sessions for s in pool.servers) == [1, 2]
    for env in envs:
        env.reset(seed=1)
        env.close()
    deadline = time.monotonic() + 10
    while len(pool.servers) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pool.servers) == 1, "one idle server is kept warm, the other stopped"
    warm = pool.servers[0]
    started = time.monotonic()
    env = envhub.make(ARITHMETIC, runtime="process")
    assert time.monotonic() - started < 1.0 and pool.servers == [warm]
    env.close()


def test_bad_runtime_options_are_named():
    with pytest.raises(InvalidOptionError, match="sesions_per_server"):
        envhub.make(ARITHMETIC, runtime="process", runtime_options={"sesions_per_server": 1})


def test_faults_end_the_episode_not_the_caller():
    opts = {"sessions_per_server": 1}
    env = envhub.make(FAULTY, runtime="process", runtime_options=opts)
    env.reset(seed=0)
    with pytest.raises(EnvironmentFailure, match="asked to raise"):
        env.step("raise")
    env.reset(seed=0)
    # Past [limits] memory_mb (128): the allocation fails inside the server, which keeps serving.
    with pytest.raises(EnvironmentFailure, match="MemoryError"):
        env.step("alloc:400")
    env.reset(seed=0)
    assert env.step("alloc:16")[0][-1]["content"] == "allocated 16 MB"
    hung_pid = env.server_info["server"]["pid"]
    with pytest.raises(StepTimeoutError) as exc:
        env.step("sleep:10")
    assert exc.value.timeout_s == 2.0
    # The timed-out step still holds a thread of that server: the next episode moves to a new one,
    # and the old server, left with no session, is stopped.
    env.reset(seed=0)
    assert env.server_info["server"]["pid"] != hung_pid
    assert env.step("still here")[0][-1]["content"] == "echo: still here"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(hung_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the server with a hung thread was not stopped")
    env.close()


def test_a_dead_server_is_reported_and_replaced():
    env = envhub.make(FAULTY, runtime="process", runtime_options={"sessions_per_server": 1})
    env.reset(seed=0)
    first_pid = env.server_info["server"]["pid"]
    with pytest.raises(RuntimeDiedError) as exc:
        env.step("exit")
    assert isinstance(exc.value, EnvironmentFailure)
    assert "exited with code 3" in str(exc.value)
    with pytest.raises(RuntimeDiedError):
        env.step("again")
    env.reset(seed=0)  # a new server, transparently
    assert env.server_info["server"]["pid"] != first_pid
    assert env.step("alive")[0][-1]["content"] == "echo: alive"
    env.close()
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)


def test_child_exits_when_its_parent_is_gone(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import envhub, sys\n"
        f"env = envhub.make({str(ARITHMETIC)!r}, runtime='process')\n"
        "print(env.server_info['server']['pid'], flush=True)\n"
        "import os; os._exit(0)  # no atexit: the child must notice on its own\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True)
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail(f"server process {child} outlived its parent")


def test_make_async_recovers_from_a_dead_server():
    import asyncio

    from envhub.runtime.remote import make_async

    async def main() -> None:
        envs = await asyncio.gather(*(make_async(FAULTY, runtime="process") for _ in range(8)))
        assert len({e.server_info["server"]["pid"] for e in envs}) == 1  # one pooled server
        await asyncio.gather(*(e.reset(seed=i) for i, e in enumerate(envs)))
        results = await asyncio.gather(*(e.step(f"hi {i}") for i, e in enumerate(envs)))
        assert [r[0][-1]["content"] for r in results] == [f"echo: hi {i}" for i in range(8)]
        with pytest.raises(RuntimeDiedError):
            await envs[0].step("exit")
        # Every environment on that server lost its episode; each reset moves it to a new server.
        with pytest.raises(RuntimeDiedError):
            await envs[1].step("hello")
        await asyncio.gather(*(e.reset(seed=0) for e in envs[:2]))
        assert (await envs[1].step("back"))[0][-1]["content"] == "echo: back"
        await asyncio.gather(*(e.close() for e in envs))

    asyncio.run(main())


def test_the_child_stops_on_close_and_at_exit():
    env = envhub.make(ARITHMETIC, runtime="process")
    pid = env.server_info["server"]["pid"]
    env.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped by close(), not later
    from envhub.runtime.remote import close_all_pools

    env = envhub.make(ARITHMETIC, runtime="process")
    pid = env.server_info["server"]["pid"]
    close_all_pools()  # what runs at interpreter exit
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _faulty_copy(tmp_path: Path, **limits) -> Path:
    """The faulty environment with other ``[limits]``."""
    folder = tmp_path / "faulty"
    shutil.copytree(FAULTY, folder, ignore=shutil.ignore_patterns("__pycache__"))
    toml = (folder / "envhub.toml").read_text()
    for key, value in limits.items():
        toml = re.sub(rf"^{key} = .*$", f"{key} = {value}", toml, flags=re.M)
    (folder / "envhub.toml").write_text(toml)
    return folder


def test_shared_memory_counts_against_the_memory_limit(tmp_path):
    # 2 GiB of shared anonymous memory, every page written, past a 256 MiB cap: RLIMIT_DATA alone
    # let it through (in about 3 s here, so the step timeout is raised to see it finish).
    folder = _faulty_copy(tmp_path, memory_mb=256, step_timeout_s=60)
    env = envhub.make(folder, runtime="process", runtime_options={"sessions_per_server": 1})
    env.reset(seed=0)
    with pytest.raises((EnvironmentFailure, RuntimeDiedError)) as exc:
        env.step("shm:2048")
    assert not isinstance(exc.value, StepTimeoutError), str(exc.value)
    env.reset(seed=0)  # the same server, or a new one after the old was killed
    assert env.step("alloc:16")[0][-1]["content"] == "allocated 16 MB"
    env.close()


def test_process_count_is_capped_where_a_cgroup_can_be_made():
    env = envhub.make(FAULTY, runtime="process", runtime_options={"sessions_per_server": 1})
    env.reset(seed=0)
    (server,) = pool_for("process", envhub.locate(FAULTY)).servers
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    assert f"{server.enforced['address_space_bytes']}" in next(line for line in limits.splitlines() if "address space" in line)
    if "pids" not in server.enforced:
        env.close()
        pytest.skip("no writable cgroup here: [limits] pids and cpus are not enforced (README, runtimes)")
    assert all(str(server.proc.pid) in path.read_text().split() for path in server.cgroup.procs_files())
    # [limits] pids = 64, threads included: 100 more processes at once are refused; 10 are fine.
    with pytest.raises(EnvironmentFailure, match="BlockingIOError|Resource temporarily unavailable"):
        env.step("spawn:100")
    env.reset(seed=0)
    assert env.step("spawn:10")[0][-1]["content"] == "spawned 10 processes"
    folders = set(server.cgroup.dirs.values())
    env.close()
    pool_for("process", envhub.locate(FAULTY)).close()
    assert not any(folder.exists() for folder in folders), "the cgroup is removed with its server"
