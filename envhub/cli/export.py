"""``envhub export``: write an environment (or runs over it) in another tool's format."""

from __future__ import annotations

from pathlib import Path

import typer

export_app = typer.Typer(help="Write an environment, or runs over it, in another tool's format.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")


@export_app.command("dataset")
def dataset(
    targets: list[str] = typer.Argument(..., metavar="[ENV] OUT", help="The environment (a name, ns/name@spec or a folder) and the output folder; only OUT with --from-run."),
    split: str = typer.Option("train", "--split", "-s", help="The split whose tasks to export."),
    n: int = typer.Option(None, "-n", "--tasks", min=1, help="How many tasks (default: every listed task, or 100 of a generator's)."),
    env_arg: list[str] = typer.Option([], "--env-arg", help="KEY=VALUE passed to the environment (repeatable)."),
    runtime: str = typer.Option("inprocess", help="Where the environment runs: inprocess, process or docker."),
    from_run: Path = typer.Option(None, "--from-run", help="Export the episodes of this `envhub eval` or `envhub train` run folder instead of tasks."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write a Hugging Face dataset: an environment's tasks, or an evaluation or training run's episodes.

    `envhub export dataset arithmetic --split test -n 50 OUT` writes one row per task (prompt
    messages, task id, split, seed, environment identity and digest); `envhub export dataset
    --from-run runs/eval/RUN OUT` one row per episode (messages, rewards, rubric breakdown,
    identities, model; a training run's with its step, group and advantage). Read OUT with `datasets.load_from_disk(OUT)`, or OUT/data.parquet with
    `load_dataset("parquet", data_files=...)`.
    """
    from envhub.cli.common import console, parse_env_args
    from envhub.integrations import datasets as exported

    wanted = 1 if from_run is not None else 2
    if len(targets) != wanted:
        usage = "--from-run RUN_DIR OUT" if from_run is not None else "ENV OUT"
        raise typer.BadParameter(f"expected {usage}, got {len(targets)} argument(s): {' '.join(targets)}", param_hint="[ENV] OUT")
    out = Path(targets[-1])
    if from_run is not None:
        data = exported.run_dataset(from_run)
        what = f"{len(data)} episodes of {from_run}"
    else:
        data = exported.task_dataset(targets[0], split=split, n=n, runtime=runtime, **parse_env_args(env_arg))
        what = f"{len(data)} {split} tasks of {data[0]['env'] if len(data) else targets[0]}"
    written = exported.save(data, out, overwrite=overwrite)
    console.print(f"wrote {what} to [bold]{written}[/] (and {written / exported.PARQUET_FILE})", highlight=False)


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
