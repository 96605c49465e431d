"""Commands for environment authors: init, validate, play, pack, index."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from envhub.errors import EnvhubError, ValidationFailed

console = Console()


def init(
    name: str = typer.Argument(..., help="Folder and environment name, e.g. `word-ladder`."),
    namespace: str = typer.Option("local", help="Namespace the environment is published under."),
    parent: Path = typer.Option(Path("."), help="Folder to create it in."),
) -> None:
    """Scaffold a working environment folder (it passes `envhub validate` as generated)."""
    from envhub.authoring.scaffold import scaffold

    folder = scaffold(name, parent=parent, namespace=namespace)
    console.print(f"created [bold]{folder}[/]: edit {folder}/*_env.py, then `envhub validate {folder}`")


def validate(folder: Path = typer.Argument(..., help="Environment folder (with envhub.toml).")) -> None:
    """Run the contract checks: manifest, import, check_env, seeded determinism, scores, turn bounds."""
    from envhub.authoring.validate import validate as run_checks

    with console.status(f"validating {folder}"):
        report = run_checks(folder)
    table = Table(title=f"{report.env or folder}", show_header=True)
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        table.add_row(check.name, "[green]ok[/]" if check.ok else "[red]FAIL[/]", check.detail)
    console.print(table)
    if not report.ok:
        raise ValidationFailed(report.env or str(folder), [c.name for c in report.checks if not c.ok])
    console.print("[green]all checks pass[/]")


def play(
    env_id: str = typer.Argument(..., metavar="NAME", help="Bundled name, namespace/name@version, or folder."),
    seed: int = typer.Option(None, help="Seed for the episode (random when omitted)."),
    split: str = typer.Option(None, help="Split to draw the task from."),
    task_id: str = typer.Option(None, "--task", help="Play this task id."),
) -> None:
    """Play an environment in the terminal, typing the assistant's turns (end a message with an empty line)."""
    from envhub.runtime.make import make

    env = make(env_id)
    options = {k: v for k, v in (("split", split), ("task_id", task_id)) if v is not None}
    obs, info = env.reset(seed=seed, options=options or None)
    console.print(f"[dim]{info.get('env')} task {info['task_id']}, up to {env.max_turns} turn(s)[/]")
    shown = 0
    while True:
        _print_messages(obs[shown:])
        action = _read_turn()
        shown = len(obs) + 1  # the assistant message just typed is not echoed back
        obs, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            _print_messages(obs[shown:])
            _print_rubric(info.get("rubric"), reward, truncated)
            return


def _print_messages(messages: list[dict]) -> None:
    for message in messages:
        console.print(f"[bold cyan]{message['role']}[/]: {message['content']}", highlight=False)


def _read_turn() -> str:
    """Lines typed until an empty line (or end of input) make one assistant message."""
    console.print("[bold]assistant[/] (empty line to send):")
    lines: list[str] = []
    while True:
        try:
            line = input()
        except EOFError:
            if not lines:
                raise typer.Exit(0) from None
            break
        if line == "":
            if lines:
                break
            continue
        lines.append(line)
    return "\n".join(lines)


def _print_rubric(rubric: dict | None, reward: float, truncated: bool) -> None:
    console.print(f"[bold]episode over[/]{' (turn limit reached)' if truncated else ''}: reward {reward:.3f}")
    if not rubric:
        return
    table = Table(show_header=True)
    for column in ("criterion", "weight", "score", "reason"):
        table.add_column(column)
    for name, r in rubric["criteria"].items():
        score = "unscored" if r["score"] is None else f"{r['score']:.2f}"
        table.add_row(name, f"{r['weight']:g}", score, r.get("reason") or "")
    console.print(table)


def archive(
    folder: Path = typer.Argument(..., help="Environment folder."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder to write NAME-VERSION.tar.gz into."),
) -> None:
    """Write the reproducible artifact NAME-VERSION.tar.gz and print its sha256 digest."""
    from envhub.identity.artifact import pack as pack_folder  # the artifact, not a pack sold to labs

    path, digest = pack_folder(folder, out)
    print(f"{path}  {digest}")


def index(
    environments: Path = typer.Argument(Path("environments"), help="Folder of environment folders."),
    output: Path = typer.Option(None, "--output", "-o", help="Index file (default: registry.json beside it)."),
    check: bool = typer.Option(False, "--check", help="Exit 1 if the index file is stale instead of writing it."),
) -> None:
    """Regenerate the registry.json that indexes a folder of environments."""
    from envhub.identity.artifact import write_atomic
    from envhub.registry.indexing import build_index

    output = output or environments.parent / "registry.json"
    text = build_index(environments, root=output.parent).to_json()
    if check:
        current = output.read_text(encoding="utf-8") if output.is_file() else ""
        if current != text:
            raise EnvhubError(f"{output} is stale", hint=f"run `envhub index {environments}` and commit it")
        console.print(f"{output} is up to date")
        return
    write_atomic(output, text.encode())
    console.print(f"wrote {output}")


def register(app: typer.Typer) -> None:
    for command in (init, validate, play, archive, index):
        app.command()(command)
