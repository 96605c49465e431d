"""The learning-rate schedule: linear warmup, then constant or decaying to zero at the end of the run.

A run ends at its step count or its wall-clock budget (``max_train_seconds``), whichever comes
first, so the decay follows whichever of the two is further along: a four-minute run on a slow
machine anneals in its four minutes, however few steps they hold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["LrDecay", "lr_multiplier"]

LrDecay = Literal["constant", "linear", "cosine"]


def lr_multiplier(
    *,
    warmup: int,
    decay: LrDecay,
    total_updates: int | None,
    budget_s: float | None,
    clock: Callable[[], float] = time.perf_counter,
) -> Callable[[int], float]:
    """The factor on the learning rate before optimizer update ``k`` (0-based), for ``LambdaLR``.

    ``total_updates``: the optimizer updates the step count allows (None: no step limit);
    ``budget_s``: the wall-clock budget, timed from the first update (``LambdaLR`` asks for k = 0
    when it is built, before the model server and the environments start, and a resumed run asks
    for its next k after loading: neither is the start of the run's training). A plain function,
    not an object: ``LambdaLR`` saves an object's attributes in checkpoints, and a resumed run
    times its budget from its own start.
    """
    start: list[float] = []

    def factor(k: int) -> float:
        ramp = min(1.0, (k + 1) / warmup) if warmup > 0 else 1.0
        if decay == "constant":
            return ramp
        done = 0.0
        if total_updates:
            done = k / total_updates
        if budget_s and k > 0:
            if not start:
                start.append(clock())
            done = max(done, (clock() - start[0]) / budget_s)
        done = min(done, 1.0)
        left = 1.0 - done if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))
        return ramp * left

    return factor
