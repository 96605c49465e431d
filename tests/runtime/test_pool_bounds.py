"""The pool's bounds on the process runtime's real servers: the fleet grows to ``max_servers``, a make
past it waits for a seat and then fails with a CapacityError that names the option, a released seat
is reused, and idle servers shrink back to ``warm``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import envhub
from envhub.errors import CapacityError, InvalidOptionError
from envhub.runtime.remote import pool_for, prewarm

ECHO = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "echo"
BOUNDED = {"sessions_per_server": 1, "max_servers": 2, "warm": 1, "idle_ttl_s": 0.5, "lease_timeout_s": 0.5}


def _make(**overrides):
    return envhub.make(ECHO, runtime="process", runtime_options={**BOUNDED, **overrides})


def _wait_for(predicate, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_grows_to_max_servers_then_waits_and_names_the_bound():
    envs = [_make(), _make()]
    pool = pool_for("process", envhub.locate(ECHO))
    try:
        assert len(pool.servers) == 2 and all(s.sessions == 1 for s in pool.servers)
        started = time.monotonic()
        with pytest.raises(CapacityError) as caught:
            _make()
        waited = time.monotonic() - started
        assert 0.5 <= waited < 5, "waits lease_timeout_s for a seat, then gives up"
        message = str(caught.value)
        assert "max_servers=2" in message and "lease_timeout_s=0.5" in message and "raise runtime_options max_servers" in caught.value.hint
        assert len(pool.servers) == 2 and all(s.sessions == 1 for s in pool.servers), "never oversubscribed"
    finally:
        for env in envs:
            env.close()


def test_a_waiting_make_takes_the_seat_released_and_the_fleet_shrinks_to_warm():
    envs = [_make(), _make()]
    pool = pool_for("process", envhub.locate(ECHO))
    servers = list(pool.servers)
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(_make(lease_timeout_s=30)))
    waiter.start()
    time.sleep(0.3)
    assert got == [] and waiter.is_alive(), "waits while every seat is taken"
    envs[0].close()
    waiter.join(10)
    assert len(got) == 1
    envs.append(got[0])
    try:
        assert got[0]._lease.server is servers[0], "the released seat, on the server it was on"
        assert envs[2].reset(seed=0) is not None and len(pool.servers) == 2
    finally:
        for env in envs[1:]:
            env.close()
    assert _wait_for(lambda: len(pool.servers) == 1), "idle servers past warm stop after idle_ttl_s"
    assert pool.servers[0].sessions == 0 and pool.servers[0].exit_reason() is None


def test_prewarm_and_options_respect_the_bounds():
    assert prewarm(str(ECHO), runtime="process", n=5, runtime_options=BOUNDED) == 2
    assert len(pool_for("process", envhub.locate(ECHO)).servers) == 2
    for bad in ({"max_servers": 0}, {"max_servers": 1, "warm": 2}, {"sessions_per_server": 100_000}, {"lease_timeout_s": -1}):
        with pytest.raises(InvalidOptionError):
            envhub.make("arithmetic", runtime="process", runtime_options=bad)
