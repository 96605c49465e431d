"""Load an environment from its folder: read the manifest, import the entrypoint, build the env.

Each folder is imported as its own synthetic package, so two environments may both have a module
called ``env.py`` without clashing; sibling modules are imported relatively (``from . import data``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from envhub.env.core import ChatEnv
from envhub.runtime.dependencies import check_dependencies
from envhub.errors import EntrypointError, EnvhubError
from envhub.identity.manifest import EnvIdentity, Manifest, load_manifest


def _package_for(folder: Path, manifest: Manifest) -> str:
    """Import the folder as a package named after its location, once per interpreter."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    package = f"_envhub_env_{manifest.name.replace('-', '_').replace('.', '_')}_{key}"
    if package not in sys.modules:
        spec = importlib.util.spec_from_loader(package, loader=None, is_package=True)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        module.__path__ = [str(folder.resolve())]
        sys.modules[package] = module
    return package


def load_factory(folder: str | Path, manifest: Manifest | None = None):
    """The callable named by the manifest's entrypoint."""
    folder = Path(folder)
    manifest = manifest or load_manifest(folder)
    check_dependencies(manifest)  # a missing requirement is named, not met as `No module named ...`
    module_name, _, attr = manifest.entrypoint.partition(":")
    package = _package_for(folder, manifest)
    try:
        module = importlib.import_module(f"{package}.{module_name}")
    except Exception as exc:  # any failure while importing the author's module
        raise EntrypointError(manifest.ref, manifest.entrypoint, f"import failed: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise EntrypointError(
                manifest.ref, manifest.entrypoint, f"module `{module_name}` has no attribute `{part}`"
            ) from None
    if not callable(target):
        raise EntrypointError(manifest.ref, manifest.entrypoint, f"`{attr}` is not callable")
    return target


def load_folder(folder: str | Path, *, digest: str | None = None, **kwargs: Any) -> ChatEnv:
    """Build the environment in ``folder``; ``kwargs`` go to its factory."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    factory = load_factory(folder, manifest)
    try:
        env = factory(**kwargs)
    except EnvhubError:
        raise
    except TypeError as exc:
        raise EntrypointError(manifest.ref, manifest.entrypoint, f"bad arguments {sorted(kwargs)}: {exc}") from exc
    except Exception as exc:
        raise EntrypointError(manifest.ref, manifest.entrypoint, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(env, ChatEnv):
        raise EntrypointError(
            manifest.ref, manifest.entrypoint, f"returned {type(env).__name__}, expected an envhub.ChatEnv"
        )
    attach_manifest(env, manifest, folder, digest=digest, max_turns_given="max_turns" in kwargs)
    return env


def attach_manifest(
    env: ChatEnv, manifest: Manifest, folder: Path, *, digest: str | None = None, max_turns_given: bool = False
) -> None:
    """Give ``env`` its identity. The digest is computed lazily: packing costs a few milliseconds."""
    env.manifest = manifest
    if not max_turns_given:
        env.max_turns = manifest.max_turns
    env.source_dir = folder  # type: ignore[attr-defined]
    if digest is not None:
        env._identity = EnvIdentity(manifest.namespace, manifest.name, manifest.version, digest)
    else:
        env._identity = _LazyIdentity(manifest, folder)  # type: ignore[assignment]


class _LazyIdentity:
    """An :class:`EnvIdentity` whose digest is packed from the folder on first use."""

    def __init__(self, manifest: Manifest, folder: Path) -> None:
        self.namespace = manifest.namespace
        self.name = manifest.name
        self.version = manifest.version
        self._folder = folder
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            from envhub.identity.artifact import folder_digest

            self._digest = folder_digest(self._folder)
        return self._digest

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return EnvIdentity(self.namespace, self.name, self.version, self.digest).to_dict()

    def __repr__(self) -> str:
        return f"EnvIdentity({self.ref!r}, digest=<lazy>)"
