"""Small statistics for evaluation results: means with confidence intervals, pass@k, differences.

Every interval is two-sided and 95%. Which one depends on what is measured:

- a pass rate (successes out of n trials): Wilson's score interval, which stays in [0, 1] and does
  not collapse to a point at 0 or n successes;
- the mean of values known to lie in a range (rewards and criterion scores, in [0, 1]): the
  percentile bootstrap of the mean (2,000 resamples, a fixed seed, so the same values always give
  the same interval), which never leaves the range of the values themselves; a Student-t interval
  would (8 episodes with one success give -0.17 to 0.42);
- any other mean (turns): a Student-t interval (exact t quantiles for up to 30 degrees of freedom,
  the normal quantile beyond).

Differences between runs use paired differences when both runs scored the same tasks, and Welch's
interval otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# t_{0.975, df} for df = 1..30
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: float) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (1.96 beyond 30)."""
    if df < 1:
        return float("nan")
    if df > 30:
        return 1.96 + 2.4 / df  # within 0.005 of the exact value for df > 30
    lower = _T975[int(math.floor(df)) - 1]
    upper = _T975[min(int(math.ceil(df)), 30) - 1]
    return lower + (upper - lower) * (df - math.floor(df))


#: Resamples of the bootstrap interval, and its seed (fixed: the same values give the same interval).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A mean with its sample standard deviation, count and 95% confidence interval.

    ``method`` names the interval: ``"t"``, ``"bootstrap"`` or ``"wilson"`` (see the module docstring).
    """

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float
    method: str = "t"

    def to_dict(self) -> dict[str, float | int | str]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci95": [self.ci_low, self.ci_high],
                "interval": self.method}  # fmt: skip

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def estimate(values: Sequence[float], *, bounds: tuple[float, float] | None = None) -> Estimate:
    """Mean, std and 95% interval of ``values`` (an empty sequence gives NaNs, one value a zero-width interval).

    With ``bounds`` (the range the values are known to lie in, e.g. ``(0, 1)`` for rewards) and every
    value inside it, the interval is the bootstrap's, which stays inside; otherwise Student's t.
    """
    n = len(values)
    if n == 0:
        nan = float("nan")
        return Estimate(nan, nan, 0, nan, nan)
    mean = sum(values) / n
    bounded = bounds is not None and all(bounds[0] <= v <= bounds[1] for v in values)
    method = "bootstrap" if bounded else "t"
    if n == 1:
        return Estimate(mean, 0.0, 1, mean, mean, method)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    std = math.sqrt(var)
    if bounded:
        low, high = bootstrap_interval(values)
        return Estimate(mean, std, n, low, high, method)
    half = t975(n - 1) * std / math.sqrt(n)
    return Estimate(mean, std, n, mean - half, mean + half, method)


def bootstrap_interval(
    values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """The 2.5% and 97.5% percentiles of the means of ``resamples`` resamples of ``values``.

    Rewards usually take few distinct values: a resample is then drawn as counts of each (a
    multinomial), which costs the number of distinct values rather than the number of values.
    """
    import numpy as np

    data = np.asarray(values, dtype=float)
    distinct, counts = np.unique(data, return_counts=True)
    n = len(data)
    if len(distinct) == 1:
        return float(distinct[0]), float(distinct[0])
    rng = np.random.default_rng(seed)
    few = len(distinct) * 8 <= n
    chunk = max(1, 4_000_000 // (len(distinct) if few else n))  # bounds memory to a few tens of MB
    means = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        if few:
            means.append(rng.multinomial(n, counts / n, size=size) @ distinct / n)
        else:
            means.append(data[rng.integers(0, n, size=(size, n))].mean(axis=1))
    low, high = np.quantile(np.concatenate(means), [0.025, 0.975])
    # float rounding must not step outside the values' range
    return max(float(low), float(distinct[0])), min(float(high), float(distinct[-1]))


def wilson_interval(successes: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion: ``successes`` out of ``n`` trials; NaNs for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 or n successes the exact bound is 0 or 1; keep float rounding from moving it
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def proportion(successes: int, n: int) -> Estimate:
    """A pass rate with Wilson's interval, as an :class:`Estimate` (std is the Bernoulli one)."""
    if n <= 0:
        nan = float("nan")
        return Estimate(nan, nan, 0, nan, nan, "wilson")
    p = successes / n
    low, high = wilson_interval(successes, n)
    std = math.sqrt(p * (1 - p) * n / (n - 1)) if n > 1 else 0.0
    return Estimate(p, std, n, low, high, "wilson")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with ``c`` successes in ``n`` samples (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k), as a product to stay in floating point range
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


@dataclass(frozen=True)
class Difference:
    """B minus A, with a 95% interval; ``paired`` says which interval was used."""

    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    paired: bool
    n_a: int
    n_b: int

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero; never with no interval (NaN: no data, or too little)."""
        if math.isnan(self.ci_low) or math.isnan(self.ci_high) or math.isnan(self.diff):
            return False
        return not (self.ci_low <= 0.0 <= self.ci_high)

    def to_dict(self) -> dict[str, object]:
        return {
            "a": self.a,
            "b": self.b,
            "diff": self.diff,
            "ci95": [self.ci_low, self.ci_high],
            "paired": self.paired,
            "n_a": self.n_a,
            "n_b": self.n_b,
            "significant": self.significant,
        }


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """Mean of ``b[i] - a[i]`` with its t-interval: the same tasks scored by both runs."""
    if len(a) != len(b):
        raise ValueError("paired samples need the same length")
    est = estimate([y - x for x, y in zip(a, b)])
    ma, mb = estimate(a).mean, estimate(b).mean
    return Difference(ma, mb, est.mean, est.ci_low, est.ci_high, True, len(a), len(b))


def welch_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """Difference of two independent means with Welch's t-interval."""
    ea, eb = estimate(a), estimate(b)
    diff = eb.mean - ea.mean
    if ea.n < 2 or eb.n < 2:
        return Difference(ea.mean, eb.mean, diff, float("nan"), float("nan"), False, ea.n, eb.n)
    va, vb = ea.std**2 / ea.n, eb.std**2 / eb.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(ea.mean, eb.mean, diff, diff, diff, False, ea.n, eb.n)
    df = (va + vb) ** 2 / (va**2 / (ea.n - 1) + vb**2 / (eb.n - 1))
    half = t975(df) * se
    return Difference(ea.mean, eb.mean, diff, diff - half, diff + half, False, ea.n, eb.n)
