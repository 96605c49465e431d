"""Whose code may run on this machine, outside a container.

The ``inprocess`` runtime imports an environment into the caller, and ``process`` runs it in a child
process as the same user: both give its code everything the caller has (files, tokens, the network,
the docker socket). They run only trusted code:

- a folder the user points at (``envhub.make("./my-env")``), and the bundled environments;
- a local-registry version the user published from a folder (``envhub publish``), or pulled from
  the bundled environments (its install record says so: :mod:`envhub.registry.installed`);
- a version pulled from any other registry (a hub, a static registry) only when its namespace is
  one the user trusts: ``envhub trust NS``, recorded in ``$ENVHUB_HOME/config.toml``.

Anything else raises :class:`~envhub.errors.UntrustedCodeError` before a line of it runs; the
``docker`` runtime is always allowed (no network, read-only root, no secrets, limits).
"""

from __future__ import annotations

from envhub.errors import UntrustedCodeError
from envhub.registry.config import trusted_namespaces
from envhub.registry.installed import OWN_ORIGINS
from envhub.runtime.locate import Located

#: Runtimes whose environment code runs on this machine (or a Ray cluster's nodes), as the caller's user.
HOST_RUNTIMES = ("inprocess", "process", "ray")


def is_trusted(located: Located) -> bool:
    """Whether this environment's code may run on this machine (see the module docstring)."""
    if located.registry in ("folder", "bundled") or located.origin in OWN_ORIGINS:
        return True
    return located.manifest.namespace in trusted_namespaces()


def require_trusted(located: Located, runtime: str) -> None:
    """Raise :class:`UntrustedCodeError` when ``runtime`` would run untrusted code on this machine."""
    if runtime in HOST_RUNTIMES and not is_trusted(located):
        manifest = located.manifest
        raise UntrustedCodeError(manifest.ref, manifest.namespace, runtime, source=located.source)
