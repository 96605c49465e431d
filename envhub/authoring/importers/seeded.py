"""Tasks that are seeds, for imported sources whose episode a seed decides (TextArena games, OpenEnv
servers): one task per seed, ``seed-N``, even seeds in the train split and odd seeds in the test split,
so that the splits never share an episode."""

from __future__ import annotations

import numpy as np

from envhub.env.core import Task
from envhub.errors import TaskNotFoundError


class SeedTasks:
    """Mixed into a :class:`~envhub.env.core.ChatEnv` (first in its bases): its ``sample_task`` and
    ``get_task`` over seeds."""

    env_name: str

    def sample_task(self, rng: np.random.Generator, split: str) -> Task:
        seed = 2 * int(rng.integers(2**30)) + (split == "test")
        return {"id": f"seed-{seed}", "seed": seed}

    def get_task(self, task_id: str, split: str) -> Task:
        prefix, _, number = task_id.partition("-")
        if prefix != "seed" or not number.isdigit():
            raise TaskNotFoundError(self.env_name, task_id, ["seed-0" if split == "train" else "seed-1"])
        seed = int(number)
        if seed % 2 != (split == "test"):
            raise TaskNotFoundError(self.env_name, f"{task_id} (even seeds are train, odd seeds test)")
        return {"id": task_id, "seed": seed}
