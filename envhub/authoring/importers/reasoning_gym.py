"""``envhub import reasoning-gym``: any set of reasoning-gym's procedural tasks as one environment.

    envhub import reasoning-gym reasoning-gym==0.1.25 --tasks basic_arithmetic,letter_counting \\
        --task-config letter_counting.max_words=8 -o rg-counting

The environment is :class:`~envhub.authoring.importers.reasoning_gym_runtime.ReasoningGymEnv`; the
import checks every task and option against the installed package and records the test split's
question digests, so that the folder pins exactly which problems are held out.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from envhub.authoring.importers.common import Generated, Option, Source, comma_list, slug
from envhub.errors import ImportSourceError, InvalidOptionError, suggest

PACKAGE = "reasoning-gym"
MODULE = "reasoning_gym"
#: The versions the adapter is written and tested for.
SUPPORTED = "==0.1.25"
SUMMARY = "reasoning-gym's procedural tasks (--tasks a,b or all), single-turn, scored by its own score_answer"


def _task_config(text: str) -> tuple[str, str, Any]:
    """``TASK.FIELD=VALUE`` (VALUE read as JSON where it is JSON: numbers, booleans, lists)."""
    key, sep, raw = text.partition("=")
    task, dot, field = key.strip().partition(".")
    if not sep or not dot or not task or not field:
        raise ValueError("write TASK.FIELD=VALUE, e.g. letter_counting.max_words=8")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return task, field.strip(), value


OPTIONS = (
    Option("tasks", "comma-separated reasoning-gym task names, or `all`", parse=comma_list, required=True),
    Option("task-config", "a task's configuration field (difficulty), TASK.FIELD=VALUE; repeatable",
           parse=_task_config, repeat=True),  # fmt: skip
    Option("seed", "seed fixing every task's train and test problems", parse=int, default=0),
    Option("train-size", "problems per task the train split draws from", parse=int, default=10_000),
    Option("test-size", "problems per task in the test split (held out from train)", parse=int, default=100),
    Option("prompt", "few-shot (solved train problems of the same task first) or system (instructions in a "
           "system message)", default="few-shot", choices=("few-shot", "system")),  # fmt: skip
    Option("shots", "solved problems the few-shot prompt shows", parse=int, default=2),
)


def _all_tasks(factory: Any) -> list[str]:
    return sorted(name for name in factory.DATASETS if name != "composite")


def _config(factory: Any, tasks: list[str], settings: list[tuple[str, str, Any]]) -> dict[str, dict[str, Any]]:
    config: dict[str, dict[str, Any]] = {}
    for task, field, value in settings:
        if task not in tasks:
            raise ImportSourceError("reasoning-gym", task, f"--task-config names `{task}`, which is not one of --tasks")
        fields = [f.name for f in dataclasses.fields(factory.DATASETS[task][1]) if f.name not in ("seed", "size")]
        if field not in fields:
            near = suggest(field, fields)
            raise ImportSourceError(
                "reasoning-gym", task, f"`{field}` is not a configuration field of {task}"
                + (f". Did you mean `{near[0]}`?" if near else ""), hint=f"its fields: {', '.join(fields)}",
            )
        config.setdefault(task, {})[field] = value
    return config


def build(source: Source, options: dict[str, Any]) -> Generated:
    from envhub.authoring.importers.reasoning_gym_runtime import HELD_OUT_FILE, ReasoningGymEnv

    factory = source.module.factory
    tasks = _all_tasks(factory) if options["tasks"] == ["all"] else options["tasks"]
    unknown = [t for t in tasks if t not in factory.DATASETS or t == "composite"]
    if unknown:
        near = suggest(unknown[0], _all_tasks(factory))
        raise ImportSourceError(
            "reasoning-gym", unknown[0], f"reasoning-gym {source.version} has no task `{unknown[0]}`"
            + (f". Did you mean `{near[0]}`?" if near else ""), hint="`--tasks all` imports every task",
        )
    config = _config(factory, tasks, options["task_config"])
    settings: dict[str, Any] = {
        "tasks": tasks, "config": config, "seed": options["seed"], "train_size": options["train_size"],
        "test_size": options["test_size"], "package_version": source.version, "prompt": options["prompt"],
        "shots": options["shots"],
    }  # fmt: skip
    try:
        env = ReasoningGymEnv(**settings)
        held_out = {"tasks": {task: env.held_out_record(task, env.held_out_digests(task)) for task in tasks}}
    except InvalidOptionError as exc:
        raise ImportSourceError("reasoning-gym", source.text, str(exc)) from exc
    except Exception as exc:  # a task whose generator raises
        raise ImportSourceError("reasoning-gym", source.text, f"generating the test split raised {type(exc).__name__}: {exc}") from exc
    no_reference = [t for t in tasks if env.dataset(t, "test")[0].get("answer") is None]
    categories = sorted({env.dataset(t, "test").category for t in tasks})
    name = "rg-" + ("-".join(slug(t) for t in tasks) if len(tasks) <= 3 else f"{len(tasks)}-tasks")
    return Generated(
        name=name,
        description=f"reasoning-gym {source.version} tasks {_shown(tasks)}, single-turn, scored by reasoning-gym's own score_answer.",
        class_name="ReasoningGymEnv",
        runtime_module="envhub.authoring.importers.reasoning_gym_runtime",
        settings=settings,
        pass_folder=True,
        files={HELD_OUT_FILE: json.dumps(held_out, indent=1, sort_keys=True) + "\n"},
        max_turns=1,
        rubric_summary="correct: reasoning-gym's score_answer on the one <answer> (0.9); answer_format: exactly one non-empty <answer> tag (0.1)",
        tags=["reasoning-gym", "imported", "single-turn", "verifiable", *categories],
        memory_mb=1024,  # importing reasoning-gym brings sympy and matplotlib
        readme=_readme(source, tasks, config, settings, no_reference),
        tests=_TESTS,
    )


def _shown(tasks: list[str]) -> str:
    return ", ".join(tasks) if len(tasks) <= 6 else ", ".join(tasks[:6]) + f" and {len(tasks) - 6} more"


def _readme(source: Source, tasks: list[str], config: dict, settings: dict, no_reference: list[str]) -> str:
    lines = [
        f"Tasks ({len(tasks)}) from reasoning-gym {source.version}, drawn uniformly by task:",
        "",
        *[f"- `{t}`" + (f": {', '.join(f'{k}={v!r}' for k, v in config[t].items())}" if config.get(t) else "") for t in tasks],
        "",
        "## Episodes",
        "",
        *_episodes(settings["prompt"], settings["shots"]),
        "Task ids are `TASK/INDEX` (the index into the task's split).",
        "",
        "## Splits",
        "",
        f"- `test`: {settings['test_size']} problems per task, from a seed of their own (seed {settings['seed']}).",
        f"- `train`: draws from {settings['train_size']} problems per task of another seed, skipping every problem",
        "  whose question is in `test` (their digests are in `held_out.json`): the splits share no problem.",
        "",
        "## Scoring",
        "",
        "- `correct` (0.9): reasoning-gym's own `score_answer` for the task, on the one answer inside the",
        "  reply's `<answer>` tag (partial credit where the task's scorer gives it).",
        "- `answer_format` (0.1): exactly one non-empty `<answer>` tag.",
        "",
        "Hedging earns nothing: a reply with several `<answer>` tags scores 0; an answer more than twice as",
        "long as the expected one (and 16 characters longer) is a list of candidates and scores 0; and the",
        "default scorer's credit for an answer that merely contains the expected one is not given.",
    ]
    if no_reference:
        lines += ["", "Tasks with no single expected answer (their scorer checks the answer itself, and the",
                  f"environment has no reference answer for them): {', '.join(no_reference)}."]  # fmt: skip
    return "\n".join(lines)


def _episodes(prompt: str, shots: int) -> list[str]:
    if prompt == "system":
        return ["Single-turn: a system message asking for the final answer inside `<answer></answer>` tags, then the",
                "task's question as the user turn."]  # fmt: skip
    return [
        f"Single-turn, few-shot (`--prompt few-shot --shots {shots}`): first exchanges solve {shots} problems of the",
        "same task (its first train problems outside `test`; the first question comes after a line of",
        "instructions, and each reply is `The answer is X. <answer>X</answer>`), then the task's question is",
        "the user turn the model answers. A task with no single expected answer gets the instructions as a",
        "system message instead. `--prompt system` does that for every task: small models then rarely write",
        "the tag (SmolLM2-135M-Instruct, greedy, on easy settings of 9 families: 216 of 216 replies with two",
        "shots, none of 192 with the system message).",
    ]


_TESTS = '''

def test_reference_answer_scores_full():
    env = envhub.make(FOLDER)
    env.reset(seed=0, options={"split": "test"})
    reference = env.reference_action(env.episode)
    if reference is None:
        pytest.skip("this task has no single expected answer")
    _, reward, terminated, _, info = env.step(reference)
    assert terminated and reward == 1.0, info["rubric"]


def test_several_answers_earn_nothing():
    env = envhub.make(FOLDER)
    env.reset(seed=0, options={"split": "test"})
    reference = env.reference_action(env.episode) or "<answer>0</answer>"
    _, reward, *_ = env.step(reference + "\\n<answer>0</answer>\\n<answer>1</answer>")
    assert reward == 0.0
'''
