"""``envhub import harbor``: a Harbor task folder, or a dataset of them, as one multi-turn environment.

    envhub import harbor path/to/task -o my-task                 # instruction.md, task.toml, environment/, tests/
    envhub import harbor path/to/dataset --test-tasks a,b -o my-dataset   # a folder of task folders

The environment is :class:`~envhub.authoring.importers.harbor_runtime.HarborEnv`. The import reads
every task (a missing ``instruction.md``, ``task.toml``, ``tests/test.sh`` or environment is named),
builds each task's image offline from its ``environment/`` (or finds its ``docker_image`` on this
machine), and copies the task folders into the environment's ``tasks/``, each pinned by its digest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envhub.authoring.importers.common import Generated, Option, Source, comma_list, slug
from envhub.authoring.importers.harbor_runtime import TASKS_DIR, folder_digest, read_task, task_image
from envhub.errors import EnvhubError, ImportSourceError

PACKAGE = ""
MODULE = ""
SUPPORTED = ""
SUMMARY = "Harbor tasks (instruction.md, task.toml, environment/, tests/): the model works in the task's container, its tests score it"
SOURCE_HELP = "a Harbor task folder, or a dataset folder of task folders"

OPTIONS = (
    Option("tasks", "the dataset's tasks to import (default: all)", parse=comma_list),
    Option("test-tasks", "the tasks of the test split, the others being train (default: every task in both)", parse=comma_list),
    Option("reward-key", "the reward of a reward.json that holds several"),
    Option("max-turns", "the model's turns before an episode is cut off (the tests still run)", parse=int, default=20),
    Option("command-timeout-s", "how long each of the model's command blocks may run", parse=float, default=60.0),
    Option("license", "the tasks' license (SPDX), recorded in the manifest", default="NOASSERTION"),
)


def resolve_source(text: str) -> Source:
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise ImportSourceError("harbor", text, f"{folder} is not a folder", hint=SOURCE_HELP)
    return Source(kind="harbor", text=text, package="", version="", module=None, pinned=folder_digest(folder))


def task_folders(root: Path) -> list[Path]:
    """``root`` itself when it is a task, else its task folders (hidden ones skipped), sorted by name."""
    if (root / "task.toml").is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "task.toml").is_file())


def build(source: Source, options: dict[str, Any]) -> Generated:
    root = Path(source.text).expanduser()
    folders = task_folders(root)
    if not folders:
        raise ImportSourceError("harbor", source.text, f"{root} holds no task.toml, nor folders that do",
                                hint="a Harbor task is a folder of instruction.md, task.toml, environment/ and tests/")  # fmt: skip
    if options["tasks"]:
        by_name = {f.name: f for f in folders}
        unknown = [name for name in options["tasks"] if name not in by_name]
        if unknown:
            raise ImportSourceError("harbor", source.text, f"no task {', '.join(unknown)} in {root}", hint="tasks: " + ", ".join(by_name))
        folders = [by_name[name] for name in options["tasks"]]
    try:
        tasks = [read_task(folder) for folder in folders]
    except ValueError as exc:
        raise ImportSourceError("harbor", source.text, str(exc)) from None
    names = [t.name for t in tasks]
    unknown = [n for n in options["test_tasks"] or [] if n not in names]
    if unknown:
        raise ImportSourceError("harbor", source.text, f"--test-tasks: no task {', '.join(unknown)}", hint="tasks: " + ", ".join(names))
    if options["test_tasks"] and len(options["test_tasks"]) == len(names):
        raise ImportSourceError("harbor", source.text, "--test-tasks names every task: the train split would be empty")
    from envhub.runtime.images import docker_client

    try:
        client = docker_client()
        images = {task.name: task_image(task, client=client) for task in tasks}
    except EnvhubError as exc:
        raise ImportSourceError("harbor", source.text, str(exc), hint=exc.hint) from None
    except RuntimeError as exc:
        raise ImportSourceError("harbor", source.text, str(exc),
                                hint="builds run without network: the Dockerfile's base image must be on this machine") from None  # fmt: skip
    files: dict[str, str | bytes] = {}
    for task in tasks:
        for path in sorted(p for p in task.folder.rglob("*") if p.is_file()):
            files[f"{TASKS_DIR}/{task.name}/{path.relative_to(task.folder).as_posix()}"] = path.read_bytes()
    digests = {task.name: folder_digest(task.folder) for task in tasks}
    settings: dict[str, Any] = {"tasks": names, "digests": digests}
    if options["test_tasks"]:
        settings["test_tasks"] = options["test_tasks"]
    if options["reward_key"]:
        settings["reward_key"] = options["reward_key"]
    settings["command_timeout_s"] = options["command_timeout_s"]
    longest = max(t.verifier_timeout_s for t in tasks)
    name = root.name if len(tasks) > 1 else tasks[0].name
    return Generated(
        name=f"harbor-{slug(name)}",
        description=f"{len(tasks)} Harbor task{'s' if len(tasks) > 1 else ''} from {root.name}: the model works in each task's "
        "container (no network) with shell commands, and the task's own tests score the result.",
        class_name="HarborEnv",
        runtime_module="envhub.authoring.importers.harbor_runtime",
        settings=settings,
        max_turns=options["max_turns"],
        rubric_summary="harbor_tests: the reward the task's tests/test.sh writes to /logs/verifier, run in its container after the episode",
        tags=["harbor", "imported", "multi-turn", "agentic", "docker"],
        step_timeout_s=longest + 4 * options["command_timeout_s"] + 120,
        pass_folder=True,
        files=files,
        readme=_readme(tasks, digests, images, options, longest),
        tests=_TESTS,
        license=options["license"],
    )


def _readme(tasks, digests, images, options, longest) -> str:
    rows = [f"| `{t.name}` | `{digests[t.name][:19]}...` | {t.verifier_timeout_s:g} s | {t.memory_mb} MB | "
            f"{'yes' if t.solution else 'no'} |" for t in tasks]  # fmt: skip
    split = (f"`test`: {', '.join(options['test_tasks'])}; `train`: the others." if options["test_tasks"]
             else "Every task is in both `train` and `test` (give `--test-tasks` for a held-out split).")  # fmt: skip
    return "\n".join([
        "## Tasks",
        "",
        "| task | digest | tests' timeout | memory | reference (solution/solve.sh) |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"The task folders are copied under `{TASKS_DIR}/`; a task whose files changed since the import is refused. {split}",
        "",
        "## Episodes",
        "",
        "One task per episode, in a fresh container of the task's image (built offline from its `environment/` and",
        "tagged by that folder's digest, or its `[environment].docker_image`, never pulled): no network, no capabilities,",
        "`no-new-privileges`, the task's memory and CPU limits. It runs as root with a writable filesystem, as Harbor",
        "tasks expect. The system message says how to work; the user message is `instruction.md`. Each of the model's",
        f"fenced ```bash blocks (at most 4 a message) is run there (at most {options['command_timeout_s']:g} s each) and its exit code and output",
        "come back; a message without one ends the episode, as does the turn limit "
        f"({options['max_turns']} turns). The docker runtime cannot run it (its container starts no containers):",
        "it plays in the inprocess and process runtimes.",
        "",
        "## Scoring",
        "",
        "- `harbor_tests` (1.0): after the episode, `/tests` and `/logs/verifier` are emptied (nothing the model left there",
        "  counts), the task's `tests/` is copied to `/tests`, and `bash /tests/test.sh` runs under the task's",
        "  `[verifier].timeout_sec`, with no network. Its reward is `/logs/verifier/reward.txt` (one number) or",
        "  `reward.json` (`{\"reward\": x}`, one named reward, or `--reward-key`'s), in [0, 1].",
        "- Tests that time out, write no reward file, or write one that is not a number in [0, 1] leave the episode",
        "  unscored, with the reason: never a made-up reward.",
        f"- The longest tests' timeout is {longest:g} s; the manifest's step timeout allows for it.",
    ])  # fmt: skip


_TESTS = '''

def test_the_reference_solution_passes_the_tasks_tests():
    env = envhub.make(FOLDER)
    for task in env.unwrapped.tasks("train"):
        obs, _ = env.reset(options={"task_id": task["id"]})
        reference = env.unwrapped.reference_action(env.unwrapped.episode)
        if reference is None:
            continue
        while True:
            obs, reward, terminated, truncated, info = env.step(env.unwrapped.reference_action(env.unwrapped.episode))
            if terminated or truncated:
                break
        assert info["rubric"]["criteria"]["harbor_tests"]["score"] is not None, info["rubric"]
    env.close()
'''
