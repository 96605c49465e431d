"""Where envhub keeps things: the local registry home and the bundled environments."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "ENVHUB_HOME"
BUNDLED_ENV = "ENVHUB_BUNDLED"


def envhub_home() -> Path:
    """``$ENVHUB_HOME``, or ``~/.envhub``: the local registry, caches and converted models."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".envhub").expanduser()


def bundled_root() -> Path | None:
    """The folder holding ``registry.json`` and ``environments/``: ``$ENVHUB_BUNDLED`` or the source tree."""
    override = os.environ.get(BUNDLED_ENV)
    if override:
        return Path(override)
    root = Path(__file__).resolve().parents[1]
    return root if (root / "registry.json").is_file() else None
