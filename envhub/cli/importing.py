"""``envhub import KIND SOURCE -o FOLDER``: an environment of another format as an envhub environment folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


def _kinds_help() -> str:
    """Each kind with its options, from the kinds' own modules (the registry in envhub.authoring.importers)."""
    from envhub.authoring.importers import KINDS, kind_module

    blocks = []
    for kind in KINDS:
        module = kind_module(kind)
        options = "\n\n".join(
            f"  --{o.name}{'' if o.flag else ' VALUE'}: {o.help}"
            + (" (required)" if o.required else "" if o.default is None or o.default is False else f" (default {o.default})")
            for o in module.OPTIONS
        )
        source = getattr(module, "SOURCE_HELP", f"{module.PACKAGE} or {module.PACKAGE}==VERSION")
        blocks.append(f"{kind} (SOURCE: {source}): {module.SUMMARY}\n\n{options}")
    return escape("Kinds and their options:\n\n" + "\n\n".join(blocks))


def import_command(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="What to import: reasoning-gym, textarena, openenv, harbor or verifiers."),
    source: str = typer.Argument(..., help="What to import from: the installed package (NAME, or NAME==VERSION to insist on one), for openenv a server's URL or a docker image, for harbor a task or dataset folder, for verifiers a module file, package folder or module installed in its interpreter."),
    output: Path = typer.Option(..., "--output", "-o", help="The environment folder to write (new or empty)."),
    name: str = typer.Option(None, "--name", help="NAMESPACE/NAME of the environment (default: local/ and a name from the source)."),
    version: str = typer.Option("0.1.0", "--version", help="The environment's version."),
    force: bool = typer.Option(False, "--force", help="Write into a folder that is not empty."),
) -> None:
    """Write an ordinary envhub environment folder (manifest pinning the source, module, README, tests)
    from another format; the kind's own options follow (see below)."""
    from envhub.authoring.importers import import_environment, kind_module
    from envhub.authoring.importers.common import options_from_args

    options = options_from_args(kind, kind_module(kind).OPTIONS, ctx.args)
    with console.status(f"importing {kind} {source}"):
        result = import_environment(kind, source, output=output, name=name, version=version, options=options, force=force)
    console.print(
        f"wrote [bold]{result.folder}[/]: {result.manifest.ref} from {result.source.requirement}\n"
        f"[dim]next: envhub validate {result.folder} && envhub audit {result.folder}[/]",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command(
        "import",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        epilog=_kinds_help(),
    )(import_command)
