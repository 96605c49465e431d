"""Commands for evaluators: eval, eval compare, audit, serve-model."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

console = Console()


class _EvalGroup(TyperGroup):
    """`envhub eval ENV...` runs an evaluation; `envhub eval compare A B` compares two runs.

    Anything that is not a subcommand name is handed to the hidden `run` command, so ENV can be any
    environment id without clashing with the subcommands.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(
    cls=_EvalGroup,
    help=(
        "Evaluate a model on environments: `envhub eval ENV... [--model M] [--base-url URL] [-n N]` "
        "(every option: `envhub eval run --help`); or compare two runs: `envhub eval compare RUN_A RUN_B`."
    ),
    no_args_is_help=True,
)


def _env_kwargs(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. --env-arg level=hard)", param_hint="--env-arg")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


@eval_app.command("run", hidden=True)
def run(
    envs: list[str] = typer.Argument(..., metavar="ENV...", help="Environment ids or folders."),
    model: str = typer.Option(None, "--model", "-m", help="Model name at the endpoint, or a local model id/folder (default: the embedded SmolLM2-135M-Instruct)."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible API root (e.g. http://127.0.0.1:8000/v1); omit to run the model locally.", envvar="ENVHUB_EVAL_BASE_URL"),
    adapter: Path = typer.Option(None, "--adapter", help="LoRA adapter folder for the local model (the trainer's output)."),
    engine: str = typer.Option("transformers", "--engine", help="What runs a local model: transformers (here) or vllm (its own process; `make vllm` installs it)."),
    episodes: int = typer.Option(20, "--episodes", "-n", help="Episodes per environment (tasks x samples)."),
    samples: int = typer.Option(1, "--samples", "-k", help="Samples per task, for pass@k."),
    split: str = typer.Option("test", help="Split to draw tasks from."),
    seed: int = typer.Option(0, help="Task i is reset with seed + i: the same seed gives the same tasks."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", help="Episodes in flight at once."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (0: greedy)."),
    top_p: float = typer.Option(1.0, "--top-p"),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most tokens per assistant message."),
    rate_limit: float = typer.Option(None, "--rate-limit", help="Most endpoint requests per second."),
    api_key_env: str = typer.Option(None, "--api-key-env", help="Variable with the API key (default ENVHUB_API_KEY, then OPENAI_API_KEY)."),
    runtime: str = typer.Option("inprocess", help="Where environments run: inprocess, process, docker or ray."),
    env_arg: list[str] = typer.Option([], "--env-arg", help="KEY=VALUE passed to the environment (repeatable)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder; an existing one of the same settings is resumed (default: a new runs/eval/ENV-MODEL-TIMESTAMP)."),
    pass_threshold: float = typer.Option(1.0, "--pass-threshold", help="Reward that counts as a pass for pass@k."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh instead of resuming."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="On resume, run errored episodes again."),
    max_retries: int = typer.Option(4, "--max-retries", help="Endpoint retries per request."),
    timeout: float = typer.Option(120.0, "--timeout", help="Endpoint request timeout, seconds."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html."),
    max_error_rate: float = typer.Option(None, "--max-error-rate", min=0.0, max=1.0, help="Exit 1 when more than this fraction of episodes ended in an error (default: only when every one did)."),
) -> None:
    """Run N episodes of each environment against a model; write results.jsonl, summary.json, report.html.

    Exits 1 before the first episode when an environment, its --env-arg values or the endpoint do
    not work, and after the last when every episode (or more than --max-error-rate) errored.
    """
    from envhub.evaluation.preflight import check_environment
    from envhub.evaluation.report import summary_table
    from envhub.evaluation.runner import EvalConfig, default_out_dir, run_eval

    kwargs = _env_kwargs(env_arg)
    configs = []
    for env in envs:
        if out is None:
            out_dir = default_out_dir(env, model=model, adapter=str(adapter) if adapter else None)
        else:
            out_dir = out if len(envs) == 1 else out / _slug(env.replace("/", "_"))
        configs.append(EvalConfig(
            env=env, out_dir=str(out_dir), model=model, base_url=base_url,
            adapter=str(adapter) if adapter else None, engine=engine, episodes=episodes, samples=samples, split=split, seed=seed,
            concurrency=concurrency, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
            rate_limit=rate_limit, api_key_env=api_key_env, runtime=runtime, env_kwargs=kwargs,
            pass_threshold=pass_threshold, overwrite=overwrite, retry_errors=retry_errors,
            max_retries=max_retries, timeout_s=timeout, report=report, max_error_rate=max_error_rate,
        ))  # fmt: skip
    if len(configs) > 1:  # every environment works before the first one's episodes start
        for config in configs:
            check_environment(config.env, runtime=runtime, env_kwargs=kwargs, split=split, seed=seed, run_dir=config.out_dir)
    for config in configs:
        out_dir = Path(config.out_dir)
        started = time.perf_counter()
        try:
            summary = run_eval(config, progress=console.is_terminal, log=lambda line: console.print(line, highlight=False))
        except KeyboardInterrupt:
            again = "run the same command again" if out is not None else f"run the same command with --out {out_dir}"
            console.print(
                f"[yellow]interrupted:[/] the finished episodes are kept in {out_dir}/results.jsonl; {again} to resume",
                highlight=False,
            )
            raise SystemExit(130) from None  # the exit code of an interrupted command
        console.print(summary_table(summary))
        if summary.errors:
            types = ", ".join(f"{k}: {v}" for k, v in summary.error_types.items())
            first = summary.first_error or {}
            console.print(
                f"[yellow]{summary.errors} of {summary.episodes} episodes ({summary.error_rate:.0%}) ended in an error[/] "
                f"({types}); the first: {first.get('type')}: {escape(str(first.get('message'))[:200])}",
                highlight=False,
            )
        files = "results.jsonl, summary.json" + (", report.html" if report else "")
        console.print(f"[dim]{out_dir}/: {files} ({time.perf_counter() - started:.0f} s)[/]", highlight=False)


@eval_app.command("compare")
def compare(
    run_a: Path = typer.Argument(..., metavar="RUN_A", help="Output folder of the first run (the baseline)."),
    run_b: Path = typer.Argument(..., metavar="RUN_B", help="Output folder of the second run."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    html: Path = typer.Option(None, "--html", help="Where to write the comparison page (default: RUN_B/compare-RUN_A.html)."),
) -> None:
    """Differences B - A per metric with 95% intervals (paired by task when both ran the same tasks),
    which direction is better for each, and a verdict; also written as an HTML page."""
    from envhub.evaluation.compare import compare_runs, comparison_table
    from envhub.evaluation.report import write_comparison

    comparison = compare_runs(run_a, run_b)
    page = write_comparison(html or run_b / f"compare-{_slug(run_a.resolve().name)}.html", comparison)
    if as_json:
        print(json.dumps({**comparison.to_dict(), "html": str(page)}, indent=2))
        return
    console.print(comparison_table(comparison))
    for warning in comparison.warnings:
        console.print(f"[yellow]note:[/] {warning}")
    console.print(f"[dim]page: {page}[/]", highlight=False)


def audit(
    env_id: str = typer.Argument(..., metavar="ENV", help="Environment id or folder."),
    tasks: int = typer.Option(8, help="Tasks each probe plays."),
    threshold: float = typer.Option(0.3, help="A probe earning a mean reward above this fails the audit."),
    split: str = typer.Option(None, help="Split to draw tasks from (default: test)."),
    seed: int = typer.Option(0),
    runtime: str = typer.Option("inprocess", help="Where the environment runs."),
    env_arg: list[str] = typer.Option([], "--env-arg", help="KEY=VALUE passed to the environment (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Reward-hacking probes against the rubric: exit 1 when one earns more than the threshold."""
    from envhub.authoring.audit import audit as run_audit
    from envhub.errors import AuditFailed

    with console.status(f"auditing {env_id}"):
        report = run_audit(
            env_id, tasks=tasks, threshold=threshold, split=split, seed=seed, runtime=runtime,
            env_kwargs=_env_kwargs(env_arg),
        )  # fmt: skip
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(report.table())
        if report.reference is None:
            console.print("[yellow]note:[/] no reference answer (the environment defines no reference_action)")
        elif report.reference.mean < 0.9:
            console.print(f"[yellow]note:[/] the reference answer earns only {report.reference.mean:.3f}")
        if report.unscored:
            console.print(
                f"[yellow]note:[/] unscored criteria: {', '.join(report.unscored)}; set ENVHUB_JUDGE_BASE_URL "
                "and ENVHUB_JUDGE_MODEL to audit the judge too"
            )
    if not report.passed:
        raise AuditFailed(report.env, report.failures)
    if not as_json:
        console.print("[green]every probe stays under the threshold[/]")


def serve_model(
    model: str = typer.Option(None, "--model", "-m", help="Hugging Face id or folder (default: the embedded SmolLM2-135M-Instruct)."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=FOLDER: a LoRA adapter served as model NAME (repeatable)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    name: str = typer.Option(None, "--name", help="Model name to serve the base model as (default: its id, or `default`)."),
    max_batch: int = typer.Option(64, "--max-batch", help="Most requests generated together."),
    engine: str = typer.Option("transformers", "--engine", help="transformers (in this process) or vllm (its own process, faster; `make vllm` installs it)."),
) -> None:
    """Serve a local model over an OpenAI-compatible API (/v1/models, /v1/chat/completions with
    streaming), with LoRA adapters by name from one base model."""
    adapters = {}
    for item in adapter:
        key, sep, folder = item.partition("=")
        if not sep or not key or not folder:
            raise typer.BadParameter(f"{item!r} is not NAME=FOLDER (e.g. --adapter mine=runs/adapter)", param_hint="--adapter")
        if not Path(folder).is_dir():
            raise typer.BadParameter(f"{folder!r} is not a folder (a peft adapter folder, e.g. runs/cispo/adapter)", param_hint="--adapter")
        adapters[key] = folder
    if engine == "vllm":
        _serve_with_vllm(model, adapters=adapters, host=host, port=port, served_name=name, max_batch=max_batch)
        return
    if engine != "transformers":
        raise typer.BadParameter(f"{engine!r} is not an engine: transformers or vllm", param_hint="--engine")
    from envhub.evaluation.model_server.app import serve

    console.print(f"serving {model or 'default'} on http://{host}:{port}/v1 (Ctrl-C to stop)")
    serve(model, adapters=adapters, host=host, port=port, device=device, served_name=name, max_batch=max_batch, log_level="info")


def _serve_with_vllm(model: str | None, *, adapters: dict[str, str], host: str, port: int, served_name: str | None, max_batch: int) -> None:
    from envhub.errors import ModelLoadError
    from envhub.models.loading import resolve_model
    from envhub.models.vllm_server import LoraSlots, VLLMServer

    served = served_name or model or "default"
    console.print(f"starting vLLM for {model or 'default'} (about a minute on a CPU)")
    server = VLLMServer(
        resolve_model(model), served_name=served, host=host, port=port, adapters=adapters,
        lora=LoraSlots.for_adapters(list(adapters.values())) if adapters else None,
        extra_args=["--max-num-seqs", str(max_batch)],
    )  # fmt: skip
    names = ", ".join([served, *adapters])
    console.print(f"serving {names} on http://{host}:{port}/v1 with vLLM (Ctrl-C to stop; its log: {server.log_path})")
    try:
        code = server.proc.wait()
        tail = server.log_tail()
    finally:  # Ctrl-C here: the server goes with us
        server.stop()
    if code:
        raise ModelLoadError(str(model or "default"), f"the vLLM server exited with code {code}; its log ended: {tail}")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
    app.command()(audit)
    app.command("serve-model")(serve_model)
