"""The one reset path of both remote clients, on the process runtime: after a step timed out, the
next reset leaves that server (its thread may never end) for a fresh one, which the async client
does as the blocking one does (tests/runtime/test_process.py covers the blocking client)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from envhub.errors import StepTimeoutError
from envhub.runtime.remote import make_async

FAULTY = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "faulty"


def _stopped(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_the_async_client_leaves_a_server_after_a_step_timeout():
    async def main() -> int:
        env = await make_async(FAULTY, runtime="process", runtime_options={"sessions_per_server": 1})
        await env.reset(seed=0)
        hung_pid = env.server_info["server"]["pid"]
        with pytest.raises(StepTimeoutError) as exc:
            await env.step("sleep:10")
        assert exc.value.timeout_s == 2.0
        await env.reset(seed=0)
        assert env.server_info["server"]["pid"] != hung_pid
        assert (await env.step("still here"))[0][-1]["content"] == "echo: still here"
        await env.close()
        return hung_pid

    hung_pid = asyncio.run(main())
    assert _stopped(hung_pid, 10), "the server with a hung thread was not stopped"
