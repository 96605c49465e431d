"""``envhub quickstart``: the main job, on the embedded defaults.

Pull a bundled environment, evaluate the default model on its held-out split, train a LoRA adapter
with CISPO for a few minutes on the CPU, evaluate again with the adapter, and show before and after.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def quickstart(
    env: str = typer.Option("arithmetic", help="Bundled environment to pull and train on."),
    level: str = typer.Option("starter", help="The environment's `level` option."),
    episodes: int = typer.Option(
        200, help="Held-out test episodes per evaluation (the same tasks before and after; 200 keep the 95% interval near 0.06)."
    ),
    algo: str = typer.Option("cispo", help="Training objective: grpo, dapo or cispo."),
    minutes: float = typer.Option(4.0, help="Minutes of training (it stops after the step that passes them)."),
    model: str = typer.Option(None, help="Base model (default: the embedded SmolLM2-135M-Instruct)."),
    out: Path = typer.Option(Path("runs/quickstart"), help="Where evaluations and the adapter go."),
    seed: int = typer.Option(0, help="Seed for the evaluations and the training run."),
) -> None:
    """Pull, evaluate, train with CISPO, evaluate again: the before and after on held-out tasks."""
    from envhub.runtime.make import pull
    from envhub.evaluation import compare_runs, evaluate
    from envhub.evaluation.compare import comparison_table, in_words
    from trainers.config import DEMO_SETTINGS, EnvSpec, make_config
    from trainers.grpo import train

    console.rule("[bold]1. pull")
    entry, version, created = pull(env)
    ref = f"{entry.full_name}@{version.version}"
    console.print(f"{'pulled' if created else 'already have'} {ref}  {version.digest}", highlight=False)
    env_kwargs = {"level": level} if level else {}

    def run_eval(label: str, adapter: Path | None):
        started = time.perf_counter()
        summary = evaluate(
            ref,
            model=model,
            adapter=str(adapter) if adapter else None,
            episodes=episodes,
            split="test",
            seed=seed,
            out_dir=out / label,
            env_kwargs=env_kwargs,
            overwrite=True,
            progress=True,
        )
        console.print(
            f"{label}: mean reward {summary.reward_mean:.3f} over {summary.episodes} episodes "
            f"({time.perf_counter() - started:.0f} s); report: {out / label / 'report.html'}",
            highlight=False,
        )
        return summary

    console.rule("[bold]2. evaluate the base model")
    before = run_eval("eval-before", None)

    console.rule(f"[bold]3. train a LoRA adapter with {algo.upper()}")
    config = make_config(
        algo,
        envs=[EnvSpec(ref, kwargs=env_kwargs)],
        overrides={
            **DEMO_SETTINGS,
            "model": model,
            "output_dir": str(out / "train"),
            "seed": seed,
            "overwrite": True,
            "max_train_seconds": minutes * 60,
        },
    )
    result = train(config)
    console.print(f"adapter: {result.adapter_dir}", highlight=False)

    console.rule("[bold]4. evaluate again with the adapter")
    after = run_eval("eval-after", result.adapter_dir)

    console.rule("[bold]5. before and after")
    table = Table(show_header=True)
    for column in ("", "before", "after"):
        table.add_column(column)
    table.add_row("mean reward", f"{before.reward_mean:.3f}", f"{after.reward_mean:.3f}")
    for name in before.criteria:
        table.add_row(
            f"  {name}", f"{before.criteria[name].get('mean', 0):.3f}", f"{after.criteria.get(name, {}).get('mean', 0):.3f}"
        )
    table.add_row("errors", str(before.errors), str(after.errors))
    console.print(table)
    comparison = compare_runs(out / "eval-before", out / "eval-after")
    console.print(comparison_table(comparison))
    console.print(f"What changed on the held-out tasks: {in_words(comparison)}.", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(quickstart)
