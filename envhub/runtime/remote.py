"""Runtimes beyond ``inprocess``: where an environment's code runs, behind the same Env contract.

Importing this package registers ``process`` and ``docker`` in :data:`envhub.runtime.make.RUNTIMES`
(``envhub.make`` imports it the first time an unknown runtime is asked for)::

    env = envhub.make("arithmetic", runtime="process")           # a child process
    env = envhub.make("arithmetic", runtime="docker")            # a locked-down container
    env = envhub.make("arithmetic", runtime="docker", runtime_options={"sessions_per_server": 1})

Either returns a :class:`envhub.runtime.client.RemoteEnv`. Servers are pooled (see :mod:`envhub.runtime.pool`):
``runtime_options`` takes the fields of :class:`~envhub.runtime.pool.PoolOptions`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from envhub.runtime.client import AsyncRemoteEnv, RemoteEnv
from envhub.errors import InvalidOptionError
from envhub.runtime.locate import Located, locate
from envhub.runtime.trust import require_trusted
from envhub.runtime.pool import (
    Lease,
    ManagedServer,
    PoolOptions,
    ServerPool,
    close_all_pools,
)

__all__ = ["Lease", "ManagedServer", "PoolOptions", "ServerPool", "close_all_pools", "make_async", "make_remote", "pool_for", "prewarm"]

_pools: dict[tuple[str, str, str], ServerPool] = {}
_pools_lock = threading.Lock()


def _digest_of(located: Located) -> str:
    if located.digest is not None:
        return located.digest
    from envhub.identity.artifact import folder_digest

    return folder_digest(located.folder)


def _options(runtime: str, located: Located, runtime_options: dict[str, Any] | None) -> PoolOptions:
    try:
        return PoolOptions.from_dict(runtime_options, runtime=runtime)
    except (TypeError, ValueError) as exc:
        raise InvalidOptionError(located.manifest.ref, "runtime_options", str(exc)) from None


def pool_for(runtime: str, located: Located, runtime_options: dict[str, Any] | None = None) -> ServerPool:
    """The pool of ``runtime`` servers for this environment build (created on first use).

    Options apply when the pool is created; later calls share it as it is.
    """
    require_trusted(located, runtime)  # asked on every call: `envhub untrust` applies to the next one
    digest = _digest_of(located)
    key = (runtime, str(Path(located.folder).resolve()), digest)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is not None and not pool._closed:
            return pool
        options = _options(runtime, located, runtime_options)
        if runtime == "process":
            from envhub.runtime.process import ProcessServer

            folder, manifest = Path(located.folder).resolve(), located.manifest

            def start() -> ManagedServer:
                return ProcessServer(folder, manifest, digest)

        elif runtime == "docker":
            from envhub.runtime.docker import container_starter

            start = container_starter(located, digest)
        elif runtime == "ray":
            from envhub.runtime.ray_fleet import RayServer

            folder, manifest, start_timeout_s = Path(located.folder).resolve(), located.manifest, options.start_timeout_s

            def start() -> ManagedServer:
                return RayServer(folder, manifest, digest, start_timeout_s=start_timeout_s)

        else:
            raise InvalidOptionError(located.manifest.ref, "runtime", f"{runtime!r} has no pool")
        pool = ServerPool(f"{runtime}:{located.manifest.ref}", start, options)
        _pools[key] = pool
        return pool


def prewarm(id_or_path: str, *, runtime: str = "docker", n: int | None = None, runtime_options: dict[str, Any] | None = None) -> int:
    """Start ``n`` idle servers of an environment now, so that the next ``make`` finds one ready."""
    return pool_for(runtime, locate(id_or_path), runtime_options).prewarm(n)


def make_remote(runtime: str, located: Located, *, runtime_options: dict[str, Any] | None = None,
                render_mode: str | None = None, **kwargs: Any) -> RemoteEnv:
    """A :class:`RemoteEnv` on a pooled ``runtime`` server (``process``, ``docker`` or ``ray``) of ``located``."""
    pool = pool_for(runtime, located, runtime_options)
    return RemoteEnv(lease=pool.lease(), reconnect=pool.lease, kwargs=kwargs, render_mode=render_mode)


async def make_async(
    id_or_path: str,
    *,
    runtime: str = "process",
    runtime_options: dict[str, Any] | None = None,
    render_mode: str | None = None,
    **kwargs: Any,
) -> AsyncRemoteEnv:
    """``envhub.make`` for asyncio: an :class:`~envhub.runtime.client.AsyncRemoteEnv` on a pooled server.

    >>> env = await envhub.make_async("arithmetic", runtime="docker", level="easy")
    >>> obs, info = await env.reset(seed=0)
    """
    import asyncio

    if runtime not in ("process", "docker", "ray"):
        raise InvalidOptionError(str(id_or_path), "runtime", f"make_async serves 'process', 'docker' or 'ray', not {runtime!r}")
    located = await asyncio.to_thread(locate, id_or_path)
    pool = await asyncio.to_thread(pool_for, runtime, located, runtime_options)
    lease = await asyncio.to_thread(pool.lease)
    return await AsyncRemoteEnv.open(lease=lease, reconnect=pool.lease, kwargs=kwargs, render_mode=render_mode)
