"""The ``envhub`` command line: a thin entry over one module per command group.

Each module in :data:`COMMAND_MODULES` exposes ``register(app)``. Known errors (``EnvhubError``)
print as one line plus the next step to take, with exit code 1; tracebacks appear only with
``ENVHUB_DEBUG=1``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from envhub.errors import EnvhubError

#: Command-group modules under ``envhub.cli``; a group whose module is absent is skipped.
COMMAND_MODULES = (
    "authoring",  # init, validate, play, archive, index
    "registry",  # publish, pull, list, info, versions, search, lock, login, pack create/publish/grant/revoke/pull, audit-log
    "runtime",  # serve, build
    "trust",  # trust, untrust
    "hub",  # hub serve, hub adduser, hub token
    "train",  # train
    "report",  # report: a training run's report.html
    "evaluate",  # eval, audit, serve-model
    "demo",  # quickstart: the main job
    "export",  # export openenv, export dataset
    "importing",  # import: reasoning-gym, TextArena (envhub.authoring.importers)
)

err_console = Console(stderr=True)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="envhub",
        help="Write, validate, publish, pull, evaluate and train on RL environments for language models.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name in COMMAND_MODULES:
        qualified = f"envhub.cli.{name}"
        if importlib.util.find_spec(qualified) is None:
            continue
        importlib.import_module(qualified).register(app)
    return app


def debug_enabled() -> bool:
    return os.environ.get("ENVHUB_DEBUG", "") not in ("", "0", "false")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app = build_app()
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting with it.
        code = app(args=argv, standalone_mode=False)
    except EnvhubError as exc:
        if debug_enabled():
            raise
        # Messages may hold [brackets]: escape them so rich does not read them as markup.
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        if exc.hint:
            err_console.print(f"[dim]next:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's usage errors and the like come through here too
        if _is_usage_error(exc):
            _print_usage_error(exc)
            sys.exit(1)
        if isinstance(exc, _click_types("Abort")):
            sys.exit(1)
        if _is_click_error(exc):
            exc.show()
            sys.exit(exc.exit_code)
        if debug_enabled():
            raise
        err_console.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))}", highlight=False)
        err_console.print("[dim]next:[/] rerun with ENVHUB_DEBUG=1 for the traceback, and report it", highlight=False)
        sys.exit(1)
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def _click_types(name: str) -> tuple[type, ...]:
    """``name`` from click and from the copy of click that typer (0.20 and later) vendors."""
    import click

    types = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored  # typer's own click, where it has one
    except ImportError:
        vendored = None
    if vendored is not None and hasattr(vendored, name):
        types.append(getattr(vendored, name))
    return tuple(types)


def _is_click_error(exc: Exception) -> bool:
    return isinstance(exc, _click_types("ClickException"))


def _is_usage_error(exc: Exception) -> bool:
    return isinstance(exc, _click_types("UsageError"))


def _print_usage_error(exc: Exception) -> None:
    """A usage mistake is a known error: one line, the next step (the nearest names), exit 1."""
    import re

    from envhub.errors import suggest

    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = message.split(" Did you mean")[0].split(" (Possible options")[0].split("\n")[0]
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "envhub"
    near = sorted(getattr(exc, "possibilities", None) or [])  # click's near option names
    unknown = re.match(r"No such command '(.+)'", message)
    if unknown and ctx is not None and hasattr(ctx.command, "list_commands"):
        near = suggest(unknown.group(1), ctx.command.list_commands(ctx))
    help_line = f"`{command} --help` lists every {'command' if unknown else 'option'}"
    if near:
        hint = "did you mean " + " or ".join(f"`{n}`" for n in near[:3]) + f"? ({help_line})"
    else:
        hint = help_line
    err_console.print(f"[dim]next:[/] {escape(hint)}", highlight=False, soft_wrap=True)
