"""``envhub.make`` and ``envhub.pull``: from an id or a folder to a running environment.

``runtime`` picks where the environment's code runs: ``inprocess`` imports it here; ``process`` and
``docker`` run it behind the session protocol (:mod:`envhub.runtime.remote`); ``ray`` runs the
process runtime's server in Ray actors across a cluster (:mod:`envhub.runtime.ray_fleet`). Whatever the runtime,
the caller gets an ``Env`` of the same contract. Only trusted code runs on this machine (in process
or as a child process): see :mod:`envhub.runtime.trust`.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium

from envhub.errors import InvalidOptionError
from envhub.registry.pulling import pull
from envhub.runtime.loading import load_folder
from envhub.runtime.locate import Located, locate
from envhub.runtime.trust import require_trusted

__all__ = ["RUNTIMES", "Located", "locate", "make", "pull"]

#: Where an environment's code can run.
RUNTIMES = ("inprocess", "process", "docker", "ray")


def make(id_or_path: str | os.PathLike, *, runtime: str = "inprocess", **kwargs: Any) -> gymnasium.Env:
    """Build an environment. ``kwargs`` are passed to the environment's factory.

    >>> env = envhub.make("arithmetic", level="easy")
    >>> obs, info = env.reset(seed=0)
    """
    located = locate(id_or_path)
    if runtime not in RUNTIMES:
        raise InvalidOptionError(located.manifest.ref, "runtime", f"{runtime!r} is not one of {sorted(RUNTIMES)}")
    require_trusted(located, runtime)  # untrusted code runs in docker only
    if runtime == "inprocess":
        return load_folder(located.folder, digest=located.digest, **kwargs)
    from envhub.runtime.remote import make_remote  # the session client and pools load only when used

    return make_remote(runtime, located, **kwargs)
