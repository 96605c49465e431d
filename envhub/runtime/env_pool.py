"""A free list of environment instances of one id, made by ``make`` on demand and reused.

Evaluation and the trainer run many episodes of one environment, a batch of them at a time. Making
an instance costs an import or a server session, so finished instances go back to the pool and the
next episode takes one from there; only as many are made as episodes are in flight at once.

    pool = EnvPool("arithmetic", kwargs={"level": "easy"})
    env = pool.take()
    try:
        obs, info = env.reset(seed=0)
        ...
    except Exception:
        pool.discard(env)  # its state is unknown (a crashed server, say): never lend it again
    else:
        pool.give(env)
    pool.close()

A pool is used from one thread (the caller's loop); it does no locking.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["EnvPool"]


class EnvPool:
    """Instances of ``env_id`` (as :func:`envhub.runtime.make.make` takes it), one per episode in flight."""

    def __init__(self, env_id: str | os.PathLike, *, runtime: str = "inprocess", kwargs: Mapping[str, Any] | None = None) -> None:
        self.env_id = env_id
        self.runtime = runtime
        self.kwargs = dict(kwargs or {})
        self.first: Any = None
        """The first instance made: every instance is the same version, so its identity stands for all."""
        self._free: list[Any] = []
        self._live: list[Any] = []  # every instance made and not discarded, lent or free

    def take(self) -> Any:
        """An idle instance, or a new one when none is idle."""
        if self._free:
            return self._free.pop()
        from envhub.runtime.make import make

        env = make(self.env_id, runtime=self.runtime, **self.kwargs)
        if self.first is None:
            self.first = env
        self._live.append(env)
        return env

    def give(self, env: Any) -> None:
        """Return an instance for the next episode to reuse."""
        self._free.append(env)

    def discard(self, env: Any) -> None:
        """Close an instance that must not be reused (it failed mid-episode)."""
        with contextlib.suppress(ValueError):
            self._live.remove(env)
        with contextlib.suppress(Exception):  # a broken instance may fail to close too
            env.close()

    def close(self) -> None:
        """Close every instance made, lent or idle; the pool can be used again afterwards."""
        live, self._live, self._free = self._live, [], []
        for env in live:
            with contextlib.suppress(Exception):
                env.close()
