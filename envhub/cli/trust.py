"""Commands that say whose code may run on this machine: trust, untrust (see envhub.runtime.trust)."""

from __future__ import annotations

import typer

from envhub.cli.common import console
from envhub.errors import InvalidEnvIdError


def _namespace(text: str) -> str:
    from envhub.identity.ids import NAME_RE

    if not NAME_RE.match(text):
        raise InvalidEnvIdError(text, "a namespace is lowercase letters, digits, '.', '_' and '-', like `acme`")
    return text


def trust(
    namespace: str = typer.Argument(None, metavar="NAMESPACE", help="e.g. acme: its pulled environments may run here."),
    list_: bool = typer.Option(False, "--list", help="List the trusted namespaces."),
) -> None:
    """Let environments pulled from NAMESPACE run on this machine (in process, or as a child process)."""
    from envhub.registry.config import config_path, set_trusted, trusted_namespaces

    if list_ or namespace is None:
        names = trusted_namespaces()
        for name in names:
            typer.echo(name)
        console.print(
            f"[dim]{len(names)} trusted namespace(s) in {config_path()}; bundled environments and those you "
            "published from a folder are always trusted[/]",
            highlight=False,
        )
        return
    changed = set_trusted(_namespace(namespace), True)
    state = "now trusted" if changed else "already trusted"
    console.print(f"{namespace}: {state}; its environments run here with any runtime", highlight=False)


def untrust(namespace: str = typer.Argument(..., metavar="NAMESPACE", help="A namespace trusted with `envhub trust`.")) -> None:
    """Stop trusting NAMESPACE: its pulled environments then run in the docker runtime only."""
    from envhub.registry.config import set_trusted

    changed = set_trusted(_namespace(namespace), False)
    state = "no longer trusted" if changed else "was not trusted"
    console.print(f"{namespace}: {state}; its pulled environments run with runtime=\"docker\" only", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(trust)
    app.command()(untrust)
