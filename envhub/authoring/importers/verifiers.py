"""``envhub import verifiers``: an environment written with the ``verifiers`` package.

    envhub import verifiers path/to/my_taskset.py -o my-env       # a module or package folder: copied in
    envhub import verifiers my_env --args '{"difficulty": 2}' -o my-env   # installed in verifiers' interpreter

verifiers 0.4 pins ``mcp==2.0.0`` and ``openai<3``, which conflict with envhub's own environment,
so it lives in a virtual environment of its own (``make verifiers``: ``.venv-verifiers``; another
interpreter with ``ENVHUB_VERIFIERS_PYTHON``). The import asks that interpreter, through
:mod:`~envhub.authoring.importers.verifiers_worker`, for the source's tasks and its rubric's reward
functions and weights, and records them; the environment
(:class:`~envhub.authoring.importers.verifiers_runtime.VerifiersEnv`) runs in envhub's interpreter
in every runtime and has the worker score each episode. Imported: verifiers 0.4 tasksets of chat
tasks (``Taskset``/``Task`` with ``@vf.reward`` functions), and the older ``load_environment(**kwargs)``
packages where they still load under 0.4; tasks that need a container, tool servers, a judge or the
task's runtime in a reward are refused with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from envhub.authoring.importers.common import Generated, Option, Source, slug
from envhub.errors import ImportSourceError

PACKAGE = "verifiers"
MODULE = ""
SUPPORTED = ">=0.4,<0.5"
SUMMARY = "a verifiers environment (0.4 taskset, or an older load_environment package): its reward functions, weighted, as the rubric"
SOURCE_HELP = "a verifiers environment: a module file or package folder, or a module installed in verifiers' interpreter"
#: The copied source files, inside the environment's folder.
SOURCE_DIR = "source"
#: verifiers' own virtual environment (`make verifiers`), beside the project.
DEFAULT_VENV = Path(__file__).resolve().parents[3] / ".venv-verifiers"


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("give a JSON object, e.g. '{\"size\": 20}'")
    return value


OPTIONS = (
    Option("args", "the taskset's configuration, or load_environment's keyword arguments, as a JSON object", parse=_json_object, default=None),
    Option("verifiers", "the verifiers version the environment is written for (checked against the installed one)"),
    Option("limit", "the most tasks read from the source", parse=int, default=10_000),
    Option("test-every", "one task in this many (by content hash) is in the test split", parse=int, default=5),
)


def verifiers_python() -> str:
    """The interpreter verifiers is installed in: $ENVHUB_VERIFIERS_PYTHON, .venv-verifiers, or this one."""
    given = os.environ.get("ENVHUB_VERIFIERS_PYTHON")
    if given:
        return given
    venv = DEFAULT_VENV / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def installed_version(python: str, package: str) -> str | None:
    code = f"import importlib.metadata as m\ntry: print(m.version({package!r}))\nexcept m.PackageNotFoundError: pass"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise ImportSourceError("verifiers", python, f"the interpreter {python} cannot run: {exc}",
                                hint="`make verifiers` creates .venv-verifiers; ENVHUB_VERIFIERS_PYTHON names another") from None  # fmt: skip
    return done.stdout.strip() or None


def resolve_source(text: str) -> Source:
    python = verifiers_python()
    version = installed_version(python, PACKAGE)
    if version is None:
        raise ImportSourceError("verifiers", text, f"verifiers is not installed in {python}",
                                hint="`make verifiers` creates .venv-verifiers with verifiers==0.4.0 (ENVHUB_VERIFIERS_PYTHON names another interpreter)")  # fmt: skip
    from packaging.specifiers import SpecifierSet

    if not SpecifierSet(SUPPORTED).contains(version, prereleases=True):
        raise ImportSourceError("verifiers", text, f"verifiers {version} is installed in {python}; this importer is written for verifiers{SUPPORTED}",
                                hint="`make verifiers` installs verifiers==0.4.0 into .venv-verifiers")  # fmt: skip
    path = Path(text).expanduser()
    if path.exists():
        return Source(kind="verifiers", text=text, package=PACKAGE, version=version, module=None)
    if "/" in text or text.endswith(".py") or not text.replace("_", "").replace(".", "").isalnum():
        raise ImportSourceError("verifiers", text, f"{path} does not exist", hint=SOURCE_HELP)
    return Source(kind="verifiers", text=text, package=PACKAGE, version=version, module=None)


def _probe(python: str, request: dict[str, Any], source: str) -> dict[str, Any]:
    """The worker's answer to one load: the source's tasks and reward functions."""
    from envhub.authoring.importers.verifiers_runtime import LOAD_TIMEOUT_S, Worker, WorkerError

    worker = Worker(python)
    try:
        return worker.request({"op": "load", **request}, timeout_s=LOAD_TIMEOUT_S)
    except WorkerError as exc:
        hints = {"missing": f"{SOURCE_HELP}; install a package into {python} with `{python} -m pip install ...`",
                 "import": "fix the module so that it imports under verifiers 0.4 (the error above is its own)",
                 "load": "an environment written for verifiers < 0.4 loads only where it does not use the API 0.4 removed"}  # fmt: skip
        raise ImportSourceError("verifiers", source, str(exc), hint=hints.get(exc.stage)) from None
    finally:
        worker.stop()


def build(source: Source, options: dict[str, Any]) -> Generated:
    from envhub.authoring.importers.harbor_runtime import folder_digest
    from envhub.authoring.importers.verifiers_runtime import TASKS_FILE, digest_of_tasks

    asked = options["verifiers"]
    if asked and asked.lstrip("=") != source.version:
        raise ImportSourceError("verifiers", source.text, f"verifiers {source.version} is installed in {verifiers_python()}, not {asked}",
                                hint=f"import with the installed version (leave out --verifiers), or install verifiers=={asked.lstrip('=')} there")  # fmt: skip
    if options["limit"] < 2:
        raise ImportSourceError("verifiers", source.text, "--limit must be at least 2 (a train and a test task)")
    if options["test_every"] < 2:
        raise ImportSourceError("verifiers", source.text, "--test-every must be at least 2")
    python = verifiers_python()
    files: dict[str, str | bytes] = {}
    path = Path(source.text).expanduser()
    staged = None
    if path.exists():  # copy the module file or package folder in: the folder then holds the source it pins
        module = path.stem if path.is_file() else path.name
        if path.is_file() and path.suffix != ".py":
            raise ImportSourceError("verifiers", source.text, f"{path} is not a .py module", hint=SOURCE_HELP)
        if path.is_dir() and not (path / "__init__.py").is_file():
            raise ImportSourceError("verifiers", source.text, f"{path} is not a package (it has no __init__.py)", hint=SOURCE_HELP)
        staged = Path(tempfile.mkdtemp(prefix="envhub-verifiers-"))
        target = staged / path.name
        if path.is_file():
            shutil.copy2(path, target)
        else:
            shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for file in sorted(p for p in staged.rglob("*") if p.is_file()):
            files[f"{SOURCE_DIR}/{file.relative_to(staged).as_posix()}"] = file.read_bytes()
    else:
        module = source.text
    request = {"module": module, "path": str(staged) if staged else None, "args": options["args"] or {}, "limit": options["limit"]}
    try:
        loaded = _probe(python, request, source.text)
        source_digest = folder_digest(staged) if staged else None
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
    tasks = loaded["tasks"]
    if len(tasks) < 2:
        raise ImportSourceError("verifiers", source.text, f"`{module}` gives {len(tasks)} task; a train and a test split need two")
    negative = [r["name"] for r in loaded["rewards"] if r["weight"] < 0]
    if negative:
        raise ImportSourceError("verifiers", source.text, f"the reward functions {', '.join(negative)} have negative weights; "
                                "envhub's criteria weigh 0 or more")  # fmt: skip
    if sum(r["weight"] for r in loaded["rewards"]) <= 0:
        raise ImportSourceError("verifiers", source.text, "every reward function weighs 0")
    if loaded["distribution"] and not staged:  # an installed environment package: pin it, not only verifiers
        dist, dist_version = loaded["distribution"]
        source = Source(kind="verifiers", text=source.text, package=dist, version=dist_version, module=None)
    files[TASKS_FILE] = json.dumps(tasks, indent=1) + "\n"
    settings = {
        "module": module, "source_dir": SOURCE_DIR if staged else None, "source_digest": source_digest,
        "args": options["args"] or {}, "limit": options["limit"], "test_every": options["test_every"],
        "rewards": loaded["rewards"], "tasks_digest": digest_of_tasks(tasks), "verifiers_version": loaded["verifiers"],
    }  # fmt: skip
    weights = ", ".join(f"`{r['name']}` ({r['weight']:g})" for r in loaded["rewards"])
    form = "a verifiers 0.4 taskset" if loaded["style"] == "taskset" else "an older `load_environment(**kwargs)` package"
    readme = f"""## What was imported

`{module}` ({form}, `{loaded['class']}`), read with verifiers {loaded['verifiers']}: its {len(tasks)} tasks
(prompt and system prompt) are recorded in `{TASKS_FILE}`{", its files copied into `source/` (digest in the module's SETTINGS)" if staged else ""}.
Each episode is single-turn: the model answers the task's prompt. One task in {options['test_every']} (by
content hash) is in the test split, the others in train.

## How it is scored

By the source's own reward functions, each a criterion under its name with its weight: {weights}.
They run in verifiers' own interpreter (`[runtime] python` in `envhub.toml`: verifiers 0.4's pins
conflict with envhub's; `make verifiers` creates it). The total is the weighted mean (verifiers'
own reward is the weighted sum). A reward function that raises, returns no number or one outside
[0, 1] leaves its criterion unscored, with the reason in `info["rubric"]`; no reward is made up.
"""
    return Generated(
        name=slug(f"verifiers-{module}"),
        description=f"{module}, a verifiers environment ({len(tasks)} tasks), scored by its own reward functions",
        class_name="VerifiersEnv",
        runtime_module="envhub.authoring.importers.verifiers_runtime",
        settings=settings,
        max_turns=1,
        rubric_summary=f"the verifiers reward functions {weights}, run in verifiers' interpreter",
        readme=readme,
        tags=["imported", "verifiers", "single-turn"],
        pass_folder=True,
        files=files,
        license=loaded["license"],
        python=loaded["python"],
        step_timeout_s=60.0,
    )
