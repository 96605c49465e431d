"""The environment behind every folder ``envhub import verifiers`` writes: a verifiers environment's
tasks, single-turn, scored by its own rubric's reward functions.

- Tasks: the source's tasks as the import recorded them in ``tasks.json`` (its prompt and system
  prompt as messages, and its ``answer`` where the task data has one); the test split is every task
  whose content hash falls in one bucket of ``test_every``, the train split the others.
- Rubric: one criterion per reward function of the source, under its name and with its weight. The
  functions run in verifiers' own interpreter (``[runtime] python``: verifiers 0.4's pins conflict
  with envhub's), in a worker process (:mod:`~envhub.authoring.importers.verifiers_worker`) shared by
  every environment of this process that reads the same source. A function that raises, returns no
  number or one outside [0, 1] leaves its criterion unscored with the reason; the rubric's total is
  the weighted mean of the others (verifiers' own reward is the weighted sum).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envhub.env.core import ChatEnv, Episode, Msg, Task
from envhub.env.rubric import Criterion, Rubric, Score
from envhub.errors import EnvironmentFailure, InvalidOptionError, Unscored

WORKER_SCRIPT = Path(__file__).with_name("verifiers_worker.py")
#: The tasks the import recorded, in the environment's folder.
TASKS_FILE = "tasks.json"
#: How long the worker may take to import verifiers and load the source (cold, on a busy machine).
LOAD_TIMEOUT_S = 300.0
#: How long one episode's reward functions may take together.
SCORE_TIMEOUT_S = 60.0


def digest_of_tasks(tasks: Sequence[dict[str, Any]]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(list(tasks), sort_keys=True).encode()).hexdigest()


def in_test_split(task: dict[str, Any], test_every: int) -> bool:
    return zlib.crc32(json.dumps(task["messages"], sort_keys=True).encode()) % test_every == 0


class WorkerError(RuntimeError):
    """The worker refused a request (``stage``: missing, import, load, worker) or died."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class Worker:
    """``python verifiers_worker.py`` under the source's interpreter: one JSON request, one answer a line."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.log = tempfile.TemporaryFile()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen([python, str(WORKER_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env, start_new_session=True)  # fmt: skip
        self.lock = threading.Lock()
        self._pending = b""
        self.loaded: dict[str, Any] | None = None

    def request(self, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        with self.lock:
            if self.proc.poll() is not None:
                raise WorkerError("worker", self._died())
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps(body).encode() + b"\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                raise WorkerError("worker", self._died()) from None
            answer = json.loads(self._read_line(timeout_s))
        if not answer.get("ok"):
            raise WorkerError(answer.get("stage", "worker"), answer.get("error", "no reason given"))
        return answer

    def _read_line(self, timeout_s: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], timeout_s)
            if not ready:
                self.stop()
                raise WorkerError("worker", f"the verifiers worker gave no answer within {timeout_s:g} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise WorkerError("worker", self._died())
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def _died(self) -> str:
        code = self.proc.wait()
        self.log.seek(0)
        tail = self.log.read().decode(errors="replace").strip().splitlines()[-6:]
        return f"the verifiers worker ({self.python}) exited with code {code}" + (": " + " | ".join(tail) if tail else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


_WORKERS: dict[str, Worker] = {}
_WORKERS_LOCK = threading.Lock()


def shared_worker(python: str, load: dict[str, Any]) -> Worker:
    """The worker of this process that has loaded ``load`` under ``python`` (started and loaded once)."""
    key = json.dumps([python, load], sort_keys=True)
    with _WORKERS_LOCK:
        worker = _WORKERS.get(key)
        if worker is not None and worker.proc.poll() is None:
            return worker
        worker = Worker(python)
        try:
            worker.loaded = worker.request({"op": "load", **load}, timeout_s=LOAD_TIMEOUT_S)
        except BaseException:
            worker.stop()
            raise
        _WORKERS[key] = worker
        return worker


@atexit.register
def _stop_workers() -> None:
    for worker in _WORKERS.values():
        worker.stop()
    _WORKERS.clear()


def source_python(folder: str | Path | None) -> str:
    """The manifest's ``[runtime] python`` where it exists, else this interpreter (an image that
    installed verifiers into its own Python)."""
    if folder is not None:
        from envhub.identity.manifest import load_manifest

        python = load_manifest(folder).runtime.python
        if python and os.access(python, os.X_OK):
            return python
    return sys.executable


class RewardFunction(Criterion):
    """One reward function of the verifiers source, under its own name and weight."""

    kind = "function"

    def __init__(self, env: VerifiersEnv, name: str, *, weight: float) -> None:
        super().__init__(name, weight=weight)
        self.env = env

    def fingerprint(self) -> str:
        return self.env.fingerprint

    def check(self, episode: Episode) -> Score:
        outcome = self.env.rewards_of(episode)[self.name]
        if "error" in outcome:
            raise Unscored(f"verifiers reward function `{self.name}` failed: {outcome['error']}")
        value = outcome["score"]
        if not 0.0 <= value <= 1.0:
            raise Unscored(f"verifiers reward function `{self.name}` returned {value:g}, outside envhub's [0, 1]")
        return Score(value, f"verifiers `{self.name}`: {value:g}")


class VerifiersEnv(ChatEnv):
    """A verifiers environment's tasks, scored by its reward functions run in verifiers' interpreter.

    Args:
        module: the source's module (a taskset exporting its ``Taskset`` subclass, or a package
            with ``load_environment(**kwargs)``).
        source_dir: the folder inside the environment's folder holding the copied source files
            (None for a module installed in verifiers' interpreter).
        source_digest: the copied files' digest, checked at every load.
        args: the taskset's configuration fields, or ``load_environment``'s keyword arguments.
        limit: the most tasks read from the source.
        rewards: the reward functions' names and weights, as the import found them.
        tasks_digest: the digest of ``tasks.json``, which the worker's tasks must match.
        verifiers_version: the verifiers version the import read the source with.
        test_every: one task in this many is in the test split.
        folder: the environment's folder (its ``tasks.json``, source files and manifest).
    """

    max_turns = 1

    def __init__(
        self,
        *,
        module: str,
        rewards: Sequence[dict[str, Any]],
        tasks_digest: str,
        verifiers_version: str,
        source_dir: str | None = None,
        source_digest: str | None = None,
        args: dict[str, Any] | None = None,
        limit: int = 10_000,
        test_every: int = 5,
        folder: str | Path | None = None,
        max_turns: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(max_turns=max_turns, render_mode=render_mode)
        if folder is None:
            raise InvalidOptionError(self.env_name, "folder", "the environment's folder (its tasks.json) is needed")
        if not isinstance(test_every, int) or test_every < 2:
            raise InvalidOptionError(self.env_name, "test_every", f"must be an int >= 2, got {test_every!r}")
        self.folder = Path(folder)
        recorded = json.loads((self.folder / TASKS_FILE).read_text())
        if digest_of_tasks(recorded) != tasks_digest:
            raise EnvironmentFailure(self.env_name, "load", f"{TASKS_FILE} was changed since the import (its digest differs)")
        self.module = module
        self.source_path = str(self.folder / source_dir) if source_dir else None
        if source_dir:
            from envhub.authoring.importers.harbor_runtime import folder_digest

            if folder_digest(Path(self.source_path)) != source_digest:
                raise EnvironmentFailure(self.env_name, "load", f"the source files in {source_dir}/ were changed since the import")
        self.args = dict(args or {})
        self.limit = limit
        self.verifiers_version = verifiers_version
        self.recorded_digest = tasks_digest
        self.fingerprint = hashlib.sha256(json.dumps(
            {"verifiers": verifiers_version, "module": module, "source": source_digest, "tasks": tasks_digest,
             "args": self.args, "rewards": list(rewards)}, sort_keys=True).encode()).hexdigest()  # fmt: skip
        self._tasks = [{"id": str(i), "index": i, **t} for i, t in enumerate(recorded)]
        test = [t for t in self._tasks if in_test_split(t, test_every)]
        train = [t for t in self._tasks if not in_test_split(t, test_every)]
        if not test or not train:  # too few tasks for the hash to split: alternate
            test, train = self._tasks[::2], self._tasks[1::2] or self._tasks[::2]
        self._splits = {"train": train, "test": test}
        self.reward_specs = [dict(r) for r in rewards]
        self.rubric = Rubric([RewardFunction(self, r["name"], weight=r["weight"]) for r in rewards])
        self._scored: dict[int, tuple[int, dict[str, Any]]] = {}

    def tasks(self, split: str) -> Sequence[Task]:
        return self._splits[split]

    def initial_messages(self, task: Task) -> list[Msg]:
        return [dict(m) for m in task["messages"]]

    def reference_action(self, episode: Episode) -> str | None:
        answer = episode.task.get("answer")
        return answer if isinstance(answer, str) else None

    def teardown_episode(self, episode: Episode) -> None:
        self._scored.pop(id(episode), None)

    # --- the source's reward functions -----------------------------------------------------------

    def worker(self) -> Worker:
        load = {"module": self.module, "path": self.source_path, "args": self.args, "limit": self.limit}
        python = source_python(self.folder)
        try:
            worker = shared_worker(python, load)
        except WorkerError as exc:
            hint = " (`make verifiers` creates .venv-verifiers with it)" if "verifiers" in str(exc) else ""
            raise EnvironmentFailure(self.env_name, "load", f"{exc}{hint}") from None
        loaded = worker.loaded or {}
        if loaded.get("verifiers") != self.verifiers_version:
            raise EnvironmentFailure(self.env_name, "load", f"{python} has verifiers {loaded.get('verifiers')}; "
                                     f"the environment was imported with {self.verifiers_version}")  # fmt: skip
        if digest_of_tasks(loaded.get("tasks", [])) != self.recorded_digest or loaded.get("rewards") != self.reward_specs:
            raise EnvironmentFailure(self.env_name, "load", f"`{self.module}` now gives other tasks or reward functions "
                                     "than when it was imported: import it again")  # fmt: skip
        return worker

    def rewards_of(self, episode: Episode) -> dict[str, dict[str, Any]]:
        """Every reward function's outcome on the episode, asked of the worker once per episode."""
        cached = self._scored.get(id(episode))
        if cached is not None and cached[0] == len(episode.messages):
            return cached[1]
        messages = [{"role": m["role"], "content": m["content"]} for m in episode.messages]
        try:
            answer = self.worker().request({"op": "score", "index": episode.task["index"], "messages": messages},
                                           timeout_s=SCORE_TIMEOUT_S)  # fmt: skip
        except WorkerError as exc:
            raise EnvironmentFailure(self.env_name, "rubric", str(exc)) from None
        self._scored[id(episode)] = (len(episode.messages), answer["rewards"])
        return answer["rewards"]
