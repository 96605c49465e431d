"""``envhub train ENV... --algo grpo|dapo|cispo``: the reference trainer (see trainers/grpo.py)."""

from __future__ import annotations

import typer


def train(ctx: typer.Context) -> None:
    """Train a LoRA adapter with GRPO, DAPO or CISPO on one environment or a weighted mix.

    ENV is NAME[?key=value&...][*WEIGHT], e.g. `arithmetic?level=easy*2`. Options: --algo,
    --config FILE.toml, and --FIELD VALUE for any TrainConfig field (listed in trainers/grpo.py).
    """
    from trainers.grpo import cli_main

    code = cli_main(list(ctx.args))
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    # The trainer parses its own arguments (every config field is a flag), so pass them all through.
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})(train)
