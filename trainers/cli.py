"""``envhub train`` (and ``python -m trainers``): the trainer's command line, made from TrainConfig.

Every TrainConfig field is an option (``--group-size 8``), its help the field's docstring, grouped
by the config's sections; they are generated once, from the class, so a new field is a new option.
Settings apply in layers: the defaults, the ``--algo`` preset, the ``--config`` TOML file, then the
flags given. ``envhub.cli.train`` mounts this command; nothing here imports the CLI package (the
CLI sits above the trainer).

Kept from the command's first form: ``--group_size=8`` spells the same option, and a boolean also
takes a value (``--resume false``, ``--resume=false``) besides ``--resume`` / ``--no-resume``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Optional

import typer
from rich.markup import escape
from typer.core import TyperCommand

from envhub.runtime.make import RUNTIMES

from trainers.config import (
    ALGO_PRESETS,
    EnvSpec,
    FieldDoc,
    FieldType,
    TrainConfig,
    coerce_field,
    field_docs,
    field_types,
    make_config,
    parse_bool,
    parse_scalar,
)

__all__ = ["config_from_options", "main", "parse_args", "register"]

#: Options of the command itself, not TrainConfig fields.
ENV_HELP = "NAME[?key=value&...][*WEIGHT], e.g. `arithmetic?level=easy*2`: a bundled name, a folder or ns/name@version."
CONFIG_HELP = "TOML file of TrainConfig fields (a \\[train] table or top-level keys); the flags given override it."
ENV_KWARGS_HELP = "Factory arguments for every ENV given: key=value,key=value (an ENV's own ?key=value wins)."
RUNTIME_HELP = ("Where every environment of the run runs: inprocess, process, docker, or ray (servers on a Ray "
                "cluster: $RAY_ADDRESS's, else a local one); beats a config file's per-environment runtime.")  # fmt: skip

#: Fields that are not plain options: ENV arguments, and --algo (which picks the preset first).
_OWN = ("envs", "algo")
_METAVARS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "list": "A,B,...", "tuple": "X,Y"}
_PANELS = {"general": "Options"}

HELP = (
    "Train a LoRA adapter with GRPO, DAPO or CISPO on one environment or a weighted mix.\n\n"
    "Settings apply in layers: the defaults, the --algo preset (the paper's settings), the --config "
    "TOML file, then the flags given here (--preset cpu: a size for a CPU). Writes checkpoints, metrics.jsonl, "
    "rollouts.jsonl, provenance.json and the final peft adapter to --output-dir (default: a new "
    "runs/train/ENV-MODEL-TIMESTAMP; a named folder of the same run resumes, another run's is refused).\n\n"
    "Exits 1 before the first step when an environment, its kwargs or a judge endpoint does not work, and "
    "when a step's episodes all error (or more than --max-error-rate), or when --on-hack stop ends it on a "
    "reward-hacking alert; Ctrl-C saves a checkpoint."
)


def _help(doc: str) -> str:
    return escape(doc.replace("``", "`"))


_DEFAULTS = TrainConfig()


def _shown(value: Any) -> str:
    if isinstance(value, EnvSpec):
        query = "&".join(f"{k}={v}" for k, v in value.kwargs.items())
        return value.name + (f"?{query}" if query else "") + (f"*{value.weight:g}" if value.weight != 1 else "")
    if isinstance(value, (list, tuple)):
        return ",".join(map(_shown, value))
    return str(value)


def _default_text(name: str) -> str:
    """The field's default, and the presets that change it: ``False; dapo, cispo: True``."""
    default = getattr(_DEFAULTS, name)
    changed: dict[str, list[str]] = {}
    for algo, preset in ALGO_PRESETS.items():
        if name in preset and preset[name] != default:
            changed.setdefault(_shown(preset[name]), []).append(algo)
    return "; ".join([_shown(default)] + [f"{', '.join(algos)}: {value}" for value, algos in changed.items()])


def _checker(name: str) -> Callable[[str], str]:
    """Validates a flag's text as the field's type; returns the text, which make_config coerces."""

    def check(text: str) -> str:
        try:
            coerce_field(name, text)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        return text

    return check


def _option(field: FieldDoc, shape: FieldType) -> inspect.Parameter:
    flag = "--" + field.name.replace("_", "-")
    common = {
        "help": _help(field.doc),
        "show_default": _default_text(field.name),
        "rich_help_panel": _PANELS.get(field.section, field.section.capitalize() if field.section.islower() else field.section),
    }
    if shape.kind == "bool":
        annotation: Any = Optional[bool]
        info = typer.Option(None, f"{flag}/--no-{flag[2:]}", **common)
    elif shape.kind == "choice":
        annotation = Optional[Literal[shape.choices]]  # type: ignore[valid-type]
        info = typer.Option(None, flag, **common)
    else:
        metavar = _METAVARS[shape.kind] + ("|none" if shape.optional else "")
        annotation = Optional[str]
        info = typer.Option(None, flag, parser=_checker(field.name), metavar=metavar, **common)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def _parameters() -> list[inspect.Parameter]:
    docs = {field.name: field for field in field_docs()}
    shapes = field_types()
    own = [
        inspect.Parameter(
            "envs",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[list[str]],
            default=typer.Argument(None, metavar="ENV", help=_help(f"{docs['envs'].doc} {ENV_HELP}"), show_default=_default_text("envs")),
        ),
        inspect.Parameter(
            "algo",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[Literal[shapes["algo"].choices]],  # type: ignore[valid-type]
            default=typer.Option(None, "--algo", help=_help(docs["algo"].doc), show_default="the config file's, else cispo"),
        ),
        inspect.Parameter(
            "config_file",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[Path],
            default=typer.Option(None, "--config", metavar="FILE", exists=True, dir_okay=False, help=CONFIG_HELP, show_default=False),
        ),
        inspect.Parameter(
            "env_kwargs",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[str],
            default=typer.Option(None, "--env-kwargs", metavar="K=V,...", help=_help(ENV_KWARGS_HELP), show_default=False),
        ),
        inspect.Parameter(
            "runtime",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[Literal[RUNTIMES]],  # type: ignore[valid-type]
            default=typer.Option(None, "--runtime", help=_help(RUNTIME_HELP), show_default="inprocess"),
        ),
    ]
    fields = [_option(docs[name], shapes[name]) for name in docs if name not in _OWN]
    return own + fields


def config_from_options(options: dict[str, Any]) -> TrainConfig:
    """The TrainConfig the command's parsed options describe (``None``: an option not given)."""
    options = dict(options)
    envs = [EnvSpec.parse(text) for text in options.pop("envs") or ()]
    algo = options.pop("algo")
    config_file = options.pop("config_file")
    env_kwargs = options.pop("env_kwargs")
    if env_kwargs:
        if not envs:
            raise typer.BadParameter("applies to the ENV arguments: name at least one ENV", param_hint="'--env-kwargs'")
        extra = {k: parse_scalar(v) for k, _, v in (pair.partition("=") for pair in env_kwargs.split(",") if pair)}
        for spec in envs:
            spec.kwargs = {**extra, **spec.kwargs}
    runtime = options.pop("runtime")
    overrides = {name: value for name, value in options.items() if value is not None}
    config = make_config(algo, envs=envs or None, config_file=config_file, overrides=overrides)
    if runtime is not None:
        for spec in config.envs:
            spec.runtime = runtime
    return config


def _train(**options: Any) -> None:
    try:
        config = config_from_options(options)
    except (ValueError, OSError) as exc:  # a bad setting, ENV or TOML file: a usage error, not a crash
        raise typer.BadParameter(str(exc)) from None
    from trainers.grpo import train
    from trainers.outputs import run_summary

    try:
        result = train(config)
    except KeyboardInterrupt:  # train() saved a checkpoint and said where; no traceback
        raise SystemExit(130) from None  # the exit code of an interrupted command
    for line in run_summary(result.metrics, output_dir=result.output_dir, adapter_dir=result.adapter_dir):
        print(line)
    stopped = result.provenance.get("stopped_by_monitor")
    if stopped:  # the run ended on a hacking alert: not a success, whatever it saved
        detectors = ", ".join(stopped["detectors"])
        print(f"stopped by the reward-hacking monitor at step {stopped['step']} ({detectors}): the evidence and fixes are in "
              f"{result.output_dir / 'report.html'}; fix the rubric, or rerun with --on-hack warn to train on", file=sys.stderr)
        raise SystemExit(1)


_train.__signature__ = inspect.Signature(_parameters())  # type: ignore[attr-defined]


class TrainCommand(TyperCommand):
    """Reads ``--group_size`` as ``--group-size``, and ``--flag true|false`` for a boolean flag."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _normalise(args, self.params))


def _normalise(args: Sequence[str], params: Sequence[Any]) -> list[str]:
    switches = {
        opt: (opt, no)
        for p in params
        if getattr(p, "is_bool_flag", False) and getattr(p, "secondary_opts", None)
        for opt, no in zip(p.opts, p.secondary_opts)
    }
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            out += args[i - 1 :]
            break
        if not token.startswith("--"):
            out.append(token)
            continue
        name, eq, value = token.partition("=")
        name = "--" + name[2:].replace("_", "-")
        if name not in switches:
            out.append(name + eq + value)
            continue
        if not eq and i < len(args) and _is_bool_word(args[i]):
            value, eq = args[i], "="  # `--resume false`: the value, not an ENV
            i += 1
        if eq:
            try:
                on = parse_bool(value)
            except ValueError:
                raise typer.BadParameter(f"takes true or false, not {value!r}", param_hint=f"'{name}'") from None
            out.append(switches[name][0 if on else 1])
        else:
            out.append(name)
    return out


def _is_bool_word(text: str) -> bool:
    try:
        parse_bool(text)
    except ValueError:
        return False
    return True


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""
    app.command(name="train", cls=TrainCommand, help=HELP, no_args_is_help=False)(_train)


def parse_args(argv: Sequence[str]) -> TrainConfig:
    """The TrainConfig that ``envhub train ARGV`` would train with, parsed by the command itself."""
    app = typer.Typer()
    register(app)
    command = typer.main.get_command(app)
    with command.make_context("envhub train", list(argv)) as ctx:
        return config_from_options(ctx.params)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m trainers ENV... --algo cispo ...``: the same as ``envhub train``."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app(args=None if argv is None else list(argv), prog_name="python -m trainers")
