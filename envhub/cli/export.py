"""``envhub export``: write an environment (or runs over it) in another tool's format."""

from __future__ import annotations

from pathlib import Path

import typer

export_app = typer.Typer(help="Write an environment, or runs over it, in another tool's format.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")


@export_app.command("openenv")
def openenv(
    env_id: str = typer.Argument(..., metavar="NAME|FOLDER", help="The environment: a name, ns/name@spec or a folder."),
    out: Path = typer.Argument(None, metavar="[OUT]", help="The folder to write (default: ./NAME-openenv)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write an OpenEnv package: openenv.yaml, the image and its entry point, the environment.

    openenv.yaml's validation block comes from envhub.toml and the rubric; the image runs envhub's
    session server, which speaks OpenEnv's protocol on port 8000. No environment code runs. Check
    the package with `openenv validate OUT --level static`; push it with `openenv push OUT`.
    """
    from envhub.cli.common import console
    from envhub.integrations.openenv import export_openenv
    from envhub.runtime.locate import locate

    located = locate(env_id)
    target = out if out is not None else Path(f"{located.manifest.name}-openenv")
    written = export_openenv(located.folder, target, digest=located.digest, overwrite=overwrite)
    console.print(
        f"wrote the OpenEnv package of {located.manifest.ref} to [bold]{written}[/]\n"
        f"[dim]check it: openenv validate {written} --level static; push it: openenv push {written}[/]",
        highlight=False,
    )
