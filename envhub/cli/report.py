"""``envhub report RUN``: rebuild a training run's report.html from its folder.

The trainer rewrites the page after every step; this command draws it again from what the folder
holds (metrics.jsonl, samples.jsonl, the recorded config), for a finished run, a run in progress
or one copied from another machine.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def report(run: Path = typer.Argument(..., metavar="RUN", help="A training run's folder (the trainer's --output-dir).")) -> None:
    """Rebuild RUN/report.html: reward per criterion, length, entropy, clip fraction, KL, the
    held-out sentinel, the reward-hacking monitor's alerts and a sample of completions per step."""
    from trainers.training_report import write_training_report

    if not (run / "metrics.jsonl").is_file():
        raise typer.BadParameter(
            f"{run} holds no metrics.jsonl: name the folder a training run wrote (its --output-dir)", param_hint="RUN"
        )
    path = write_training_report(run)
    console.print(f"report: {path}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command(name="report")(report)
