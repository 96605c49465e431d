"""``envhub import KIND SOURCE``: environments of other formats as ordinary envhub environment folders.

Each kind is one module of this package, named in :data:`KINDS`, with a ``<kind>_runtime`` module
beside it when the generated environments need code at run time (the folder's module stays a few
lines that import it, so the adapter is tested once instead of copied into every folder). A kind
module defines:

- ``PACKAGE``: the distribution it imports from (``reasoning-gym``); ``SUPPORTED``: the versions of
  it the adapter is written for (a specifier);
- ``OPTIONS``: its own command-line options, a tuple of :class:`~envhub.authoring.importers.common.Option`;
- ``build(source, options) -> Generated``: check the source and the options, and describe the folder;
- optionally ``resolve_source(text) -> Source``, for a kind whose SOURCE is not the package itself (a
  server's URL, a docker image, a folder), and ``SOURCE_HELP``, what SOURCE is for it.

:func:`import_environment` does the rest the same way for every kind: it checks the installed
source, writes ``envhub.toml`` (pinning the source's exact version in ``dependencies``), the module,
a README saying what was imported and how it is scored, and the folder's tests.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from envhub._lazy import lazy_getattr
from envhub.errors import ImportSourceError, suggest

#: kind -> module of this package that imports it.
KINDS = {
    "reasoning-gym": "reasoning_gym",
    "textarena": "textarena",
    "openenv": "openenv",
    "harbor": "harbor",
    "verifiers": "verifiers",
}


def kind_module(kind: str) -> ModuleType:
    """The module that imports ``kind``; ImportSourceError with the near names when there is none."""
    module = KINDS.get(kind)
    if module is None:
        near = suggest(kind, KINDS)
        did_you_mean = f" Did you mean `{near[0]}`?" if near else ""
        raise ImportSourceError(
            kind, kind, f"`{kind}` is not a kind envhub imports.{did_you_mean}", hint="kinds: " + ", ".join(KINDS)
        )
    return importlib.import_module(f"{__name__}.{module}")


# The runtime adapters import this package at every load: the writer is loaded only when asked for.
_WRITER = f"{__name__}.writer"
__getattr__ = lazy_getattr(__name__, {"import_environment": _WRITER, "ImportResult": _WRITER})


__all__ = ["KINDS", "ImportResult", "import_environment", "kind_module"]
