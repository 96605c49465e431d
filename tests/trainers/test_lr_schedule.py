"""The learning-rate schedule: warmup, then constant or decaying to zero at the run's end, by
steps or by wall-clock budget, whichever is further along."""

import math

import pytest

from trainers.schedule import lr_multiplier
from tests.trainers.test_train_runs_tell_the_truth import _config
from trainers.grpo import train


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_constant_keeps_the_rate_after_warmup():
    factor = lr_multiplier(warmup=4, decay="constant", total_updates=10, budget_s=60.0)
    assert [factor(k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_decay_follows_the_step_count():
    linear = lr_multiplier(warmup=0, decay="linear", total_updates=4, budget_s=None)
    assert [linear(k) for k in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    cosine = lr_multiplier(warmup=0, decay="cosine", total_updates=4, budget_s=None)
    assert cosine(2) == pytest.approx(0.5) and cosine(1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_decay_follows_the_clock_from_the_first_update_when_that_is_further_along():
    clock = FakeClock()
    factor = lr_multiplier(warmup=0, decay="linear", total_updates=10_000, budget_s=100.0, clock=clock)
    assert factor(0) == 1.0  # asked when the scheduler is built: the budget has not started
    clock.now += 500.0  # model server and environments starting: not the run's training time
    assert factor(1) == pytest.approx(1.0 - 1 / 10_000)  # the first update starts the clock
    clock.now += 25.0
    assert factor(2) == pytest.approx(0.75)
    clock.now += 100.0
    assert factor(3) == 0.0  # past the budget: zero, never negative


def test_a_run_with_linear_decay_records_the_falling_rate(tmp_path):
    result = train(_config(tmp_path / "run", steps=3, lr_decay="linear", learning_rate=3e-4))
    assert [m["lr"] for m in result.metrics] == pytest.approx([3e-4, 2e-4, 1e-4])  # the rate each step's update used
    constant = train(_config(tmp_path / "constant", steps=2, learning_rate=3e-4))
    assert [m["lr"] for m in constant.metrics] == pytest.approx([3e-4, 3e-4])
