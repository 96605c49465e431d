"""Small statistics for evaluation results: means with confidence intervals, pass@k, differences.

Confidence intervals are two-sided 95% Student-t intervals of the mean (exact t quantiles for up
to 30 degrees of freedom, the normal quantile beyond); differences between runs use paired
differences when both runs scored the same tasks, and Welch's interval otherwise.
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


@dataclass(frozen=True)
class Estimate:
    """A mean with its sample standard deviation, count and 95% confidence interval."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci95": [self.ci_low, self.ci_high]}

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def estimate(values: Sequence[float]) -> Estimate:
    """Mean, std and 95% t-interval of ``values`` (an empty sequence gives NaNs, one value a zero-width interval)."""
    n = len(values)
    if n == 0:
        nan = float("nan")
        return Estimate(nan, nan, 0, nan, nan)
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, 0.0, 1, mean, mean)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    std = math.sqrt(var)
    half = t975(n - 1) * std / math.sqrt(n)
    return Estimate(mean, std, n, mean - half, mean + half)


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
