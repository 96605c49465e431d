"""Registries: where environment versions are found (see DESIGN.md, "Registries").

Every backend speaks the index format of :mod:`envhub.identity.index`. ``resolve`` finds a version entry;
``fetch`` returns the artifact's bytes, already checked against the entry's digest.
"""

from envhub.registry.base import Registry
from envhub.registry.local import LocalRegistry
from envhub.registry.config import configured_registry, open_registry
from envhub.registry.static import StaticRegistry, bundled_registry, export_static

__all__ = [
    "LocalRegistry",
    "Registry",
    "StaticRegistry",
    "bundled_registry",
    "configured_registry",
    "export_static",
    "open_registry",
]
