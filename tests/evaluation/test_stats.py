"""Intervals for values in [0, 1] stay in [0, 1] (issue 14: a reward interval of -0.110 to 0.360):
Wilson for pass rates, the bootstrap for means; differences with no data are never significant."""

from __future__ import annotations

import math
import random

import pytest

from envhub.evaluation.results import summarise
from envhub.evaluation.stats import (
    Difference,
    bootstrap_interval,
    estimate,
    proportion,
    welch_difference,
    wilson_interval,
)


def _records(rewards: list[float]) -> list[dict]:
    return [
        {"key": f"{i}/0", "task_index": i, "sample": 0, "reward": r, "error": None, "turns": 1,
         "rubric": {"criteria": {"correct": {"score": float(r >= 1.0), "weight": 1.0}}}}
        for i, r in enumerate(rewards)
    ]  # fmt: skip


def test_a_reward_interval_of_a_few_episodes_stays_in_0_1():
    # 8 episodes, one right: the t-interval was -0.17 to 0.42
    rewards = [0.0] * 7 + [1.0]
    assert estimate(rewards).ci_low < 0  # what the report used to print
    summary = summarise(_records(rewards))
    low, high = summary.reward["ci95"]
    assert 0.0 <= low <= summary.reward["mean"] <= high <= 1.0
    assert summary.reward["interval"] == "bootstrap"
    crit_low, crit_high = summary.criteria["correct"]["ci95"]
    assert 0.0 <= crit_low and crit_high <= 1.0
    # arithmetic's rewards: 0, the format's 0.1, a near miss's 0.9, 1
    mixed = [0.1, 0.1, 0.0, 0.1, 0.9, 0.1, 1.0, 0.1]
    low, high = summarise(_records(mixed)).reward["ci95"]
    assert 0.0 <= low < high <= 1.0


def test_pass_rates_use_wilson_intervals():
    low, high = wilson_interval(1, 8)
    assert (round(low, 4), round(high, 4)) == (0.0224, 0.4709)  # Wilson (1927), z = 1.96
    assert wilson_interval(0, 8)[0] == 0.0 and 0 < wilson_interval(0, 8)[1] < 0.35
    assert wilson_interval(8, 8)[1] == 1.0 and 0.65 < wilson_interval(8, 8)[0] < 1  # no collapse to a point
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(9, 8)
    summary = summarise(_records([0.0] * 7 + [1.0]))
    assert summary.pass_rate["mean"] == 0.125 and summary.pass_rate["interval"] == "wilson"
    assert summary.pass_rate["ci95"] == list(wilson_interval(1, 8))
    assert proportion(3, 4).method == "wilson"


def test_the_bootstrap_is_reproducible_and_sane():
    rng = random.Random(1)
    values = [rng.random() for _ in range(300)]
    first = bootstrap_interval(values)
    assert first == bootstrap_interval(values)  # a fixed seed: the same report every time
    mean = sum(values) / len(values)
    low, high = first
    assert low < mean < high and 0 < low and high < 1
    # close to the normal interval for a sample this large
    half = 1.96 * estimate(values).std / math.sqrt(len(values))
    assert abs((high - low) / 2 - half) < 0.25 * half
    assert bootstrap_interval([0.5] * 10) == (0.5, 0.5)
    # many distinct values and few distinct values take different paths: both stay in range
    few = [0.0, 1.0] * 200
    low, high = bootstrap_interval(few)
    assert 0.0 < low < 0.5 < high < 1.0


def test_values_outside_the_bounds_fall_back_to_the_t_interval():
    e = estimate([0.0, 2.0, 4.0], bounds=(0.0, 1.0))
    assert e.method == "t" and e.ci_low < 0  # honest: nothing says these are bounded
    assert estimate([1.0, 2.0, 3.0]).method == "t"


def test_a_difference_without_data_is_not_significant():
    empty = welch_difference([], [1.0, 0.0, 1.0])
    assert math.isnan(empty.a) and not empty.significant
    nan = float("nan")
    assert not Difference(nan, nan, nan, nan, nan, False, 0, 0).significant
    assert Difference(0.0, 1.0, 1.0, 0.5, 1.5, True, 4, 4).significant
