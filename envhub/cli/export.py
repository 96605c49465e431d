"""``envhub export``: write an environment (or runs over it) in another tool's format."""

from __future__ import annotations

import typer

export_app = typer.Typer(help="Write an environment, or runs over it, in another tool's format.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
