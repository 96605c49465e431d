"""What the command groups share: the console, the ``--registry`` option and the registries it names."""

from __future__ import annotations

import typer
from rich.console import Console

from envhub.errors import RegistryError

console = Console(soft_wrap=True)

REGISTRY_HELP = "Registry URL or folder (default: ENVHUB_REGISTRY, the config file, then local + bundled)."
RegistryOpt = typer.Option(None, "--registry", "-r", help=REGISTRY_HELP)


def read_registries(flag: str | None) -> list:
    """The registries to read from, in order: the configured one, else local then bundled."""
    from envhub.registry import LocalRegistry, bundled_registry
    from envhub.registry.config import configured_registry, open_registry

    location = configured_registry(flag)
    if location:
        return [open_registry(location)]
    return [r for r in (LocalRegistry(), bundled_registry()) if r is not None]


def pull_source(flag: str | None):
    """The one registry to pull from: the configured one, or the bundled environments."""
    from envhub.registry import bundled_registry
    from envhub.registry.config import configured_registry, open_registry

    location = configured_registry(flag)
    if location:
        return open_registry(location)
    bundled = bundled_registry()
    if bundled is None:
        raise RegistryError(
            "no registry is configured and this install has no bundled environments",
            hint="pass --registry URL, or set ENVHUB_REGISTRY",
        )
    return bundled


def hub_registry(flag: str | None):
    """The configured registry, which must be a hub server (for commands only a hub can answer)."""
    from envhub.registry.config import configured_registry, open_registry
    from envhub.registry.http import HubRegistry

    location = configured_registry(flag)
    registry = open_registry(location) if location else None
    if not isinstance(registry, HubRegistry):
        raise RegistryError(
            f"this command needs a hub server, and {location or 'no registry'} is not one",
            hint="pass --registry http://HOST:PORT of an `envhub hub serve`, or set ENVHUB_REGISTRY",
        )
    return registry


def parse_env_args(pairs: list[str], *, flag: str = "--env-arg") -> dict:
    """``KEY=VALUE`` pairs as environment kwargs; a value is read as JSON where it is JSON (3, true)."""
    import json

    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. {flag} level=hard)", param_hint=flag)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
