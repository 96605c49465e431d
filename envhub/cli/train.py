"""``envhub train ENV... --algo grpo|dapo|cispo``: the reference trainer.

The command and its options live with the trainer (:mod:`trainers.cli`), generated from
``TrainConfig``'s fields and their docstrings; this module mounts it.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from trainers.cli import register as register_train

    register_train(app)
