"""The environment behind every folder ``envhub import harbor`` writes: Harbor tasks, each a folder of
``instruction.md``, ``task.toml``, ``environment/`` (a Dockerfile, or ``[environment].docker_image``)
and ``tests/`` (``test.sh``, which writes the reward file), copied into the environment's ``tasks/``.

- Episodes: one task per episode; a fresh container of the task's image is started at reset and
  removed when the episode ends. The system message says how to work; the user message is the
  task's ``instruction.md``. Each assistant message's fenced ``bash`` (or ``sh``) blocks are run in
  the container (``bash -lc``, each bounded by ``command_timeout_s``, at most ``MAX_BLOCKS`` a
  message), and their exit codes and
  output come back as the next user message. A message with no such block ends the episode.
- Isolation: the container has no network at any time, every capability dropped,
  ``no-new-privileges``, and the task's memory and CPU limits (and a pid limit). It runs as root
  with a writable filesystem, as Harbor's tasks expect (their files belong to root); without
  capabilities root cannot change ownership, load modules or reach devices.
- Scoring, as Harbor's verifier does it, after the episode: ``/tests`` and ``/logs/verifier`` are
  emptied (nothing the model left there counts), the task's ``tests/`` is copied to ``/tests``,
  and ``bash /tests/test.sh`` runs in the working directory under ``[verifier].timeout_sec``, its
  output in ``/logs/verifier/test-stdout.txt``. ``harbor_tests`` is the reward it wrote:
  ``/logs/verifier/reward.txt`` (one number) or ``reward.json`` (``{"reward": x}``, or one named
  reward, or the one ``reward_key`` names). Tests that time out, write no reward, or write one that
  is not a number in [0, 1] leave the episode unscored with the reason, never a made-up reward.
- Images are built offline (``network_mode="none"``, no pull: the Dockerfile's base must be on this
  machine) and tagged by the digest of ``environment/``, so a build is reused until it changes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import inspect
import io
import json
import os
import re
import tarfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envhub.env.core import ChatEnv, Episode, Msg, Reply, Task, system, user
from envhub.env.rubric import Criterion, Rubric, Score
from envhub.errors import EnvironmentFailure, InvalidOptionError, TaskNotFoundError, Unscored

TASKS_DIR = "tasks"
#: Harbor's default verifier and agent timeouts, where task.toml gives none.
DEFAULT_VERIFIER_TIMEOUT_S = 600.0
DEFAULT_MEMORY_MB = 2048
#: Command blocks run per assistant message; the rest are not run (the model is told).
MAX_BLOCKS = 4
_BLOCK = re.compile(r"```(?:bash|sh|shell)[ \t]*\n(.*?)```", re.DOTALL)
SYSTEM_PROMPT = (
    "You are working on a task in a Linux container with no network access. To run shell commands, write them in a "
    "fenced ```bash block; every such block in your message is run and its exit code and output are shown to you. "
    "When the task is done, reply without a ```bash block: that ends the episode, and the task's tests then check "
    "the container's state."
)


@dataclass(frozen=True)
class HarborTask:
    """One Harbor task folder, read."""

    name: str
    folder: Path
    instruction: str
    verifier_timeout_s: float
    memory_mb: int
    cpus: float
    docker_image: str | None
    solution: str | None  # solution/solve.sh, the reference

    @property
    def environment(self) -> Path:
        return self.folder / "environment"


def _memory_mb(env: dict[str, Any]) -> int:
    if "memory_mb" in env:
        return int(env["memory_mb"])
    text = str(env.get("memory", "")).strip().upper()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?", text)
    if not match:
        return DEFAULT_MEMORY_MB
    scale = {"": 1 / 2**20, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[match.group(2)]
    return max(16, int(float(match.group(1)) * scale))


def read_task(folder: Path) -> HarborTask:
    """The task in ``folder``; ValueError naming what is missing or malformed."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    missing = [rel for rel in ("task.toml", "instruction.md", "tests/test.sh") if not (folder / rel).is_file()]
    if missing:
        raise ValueError(f"task {folder.name}: no {', '.join(missing)}")
    try:
        config = tomllib.loads((folder / "task.toml").read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"task {folder.name}: task.toml does not parse: {exc}") from None
    env = config.get("environment") or {}
    image = env.get("docker_image")
    if image is None and not (folder / "environment" / "Dockerfile").is_file():
        raise ValueError(f"task {folder.name}: neither environment/Dockerfile nor [environment].docker_image")
    solve = folder / "solution" / "solve.sh"
    try:
        timeout = float((config.get("verifier") or {}).get("timeout_sec", DEFAULT_VERIFIER_TIMEOUT_S))
        cpus = float(env.get("cpus", 1))
        memory = _memory_mb(env)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"task {folder.name}: task.toml: {exc}") from None
    return HarborTask(
        name=folder.name, folder=folder, instruction=(folder / "instruction.md").read_text(encoding="utf-8"),
        verifier_timeout_s=timeout, memory_mb=memory, cpus=cpus, docker_image=image,
        solution=solve.read_text(encoding="utf-8") if solve.is_file() else None,
    )  # fmt: skip


def folder_digest(folder: Path) -> str:
    """sha256 over a folder's files (relative paths and contents, in order): what the import pins."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def task_image(task: HarborTask, *, client: Any) -> str:
    """The image a task's episodes run in: its ``docker_image`` (on this machine, never pulled), or
    ``environment/`` built offline, tagged by that folder's digest and reused while it is unchanged."""
    import docker.errors

    if task.docker_image is not None:
        try:
            return client.images.get(task.docker_image).id
        except docker.errors.ImageNotFound:
            raise RuntimeError(f"task {task.name}: the image {task.docker_image} is not on this machine (images are "
                               f"not pulled: `docker pull {task.docker_image}` first)") from None  # fmt: skip
    digest = folder_digest(task.environment).removeprefix("sha256:")[:12]
    slug = re.sub(r"[^a-z0-9_.-]+", "-", task.name.lower()).strip("-.") or "task"
    tag = f"envhub-harbor/{slug}:{digest}"
    with contextlib.suppress(docker.errors.ImageNotFound):
        return client.images.get(tag).id
    try:
        image, _ = client.images.build(path=str(task.environment), tag=tag, network_mode="none", pull=False, rm=True, forcerm=True)
    except docker.errors.BuildError as exc:
        lines = [str(item.get("stream") or item.get("error") or "").rstrip() for item in exc.build_log]
        raise RuntimeError(f"task {task.name}: environment/ does not build offline: {exc}; "
                           + " | ".join(line for line in lines if line)[-1500:]) from None  # fmt: skip
    return image.id


def _tar_of(folder: Path, arcname: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(folder), arcname=arcname)
    return buffer.getvalue()


def _read_file(container: Any, path: str) -> str | None:
    """A file's text from the container, or None when it is not there."""
    import docker.errors

    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        if member is None or not member.isfile():
            return None
        handle = tar.extractfile(member)
        return handle.read().decode(errors="replace") if handle else None


def _run(container: Any, script: str, *, timeout_s: float, workdir: str | None = None) -> tuple[int | None, str]:
    """(exit code, output) of ``bash -lc script`` in the container; exit code None when it outlived
    ``timeout_s`` (``timeout`` stops it; past a grace period the exec is abandoned)."""
    command = ["timeout", "-k", "5", f"{timeout_s:g}", "bash", "-lc", script]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(container.exec_run, command, workdir=workdir, demux=False)
    try:
        result = future.result(timeout=timeout_s + 30)
    except concurrent.futures.TimeoutError:
        pool.shutdown(wait=False)
        return None, ""
    pool.shutdown(wait=False)
    output = (result.output or b"").decode(errors="replace")
    return (None if result.exit_code in (124, 137) else result.exit_code), output


def _remove_containers(containers: dict[str, Any]) -> None:
    for container in list(containers.values()):
        with contextlib.suppress(Exception):
            container.remove(force=True)
    containers.clear()


class HarborTests(Criterion):
    """The reward the task's own tests write, run in the episode's container after the episode."""

    kind = "function"

    def __init__(self, env: HarborEnv) -> None:
        super().__init__("harbor_tests", weight=1.0)
        self.env = env

    def fingerprint(self) -> str:
        what = repr((sorted(self.env.digests.items()), self.env.reward_key))
        return hashlib.sha256((inspect.getsource(HarborTests.check) + inspect.getsource(_reward) + what).encode()).hexdigest()

    def check(self, episode: Episode) -> Score:
        container = episode.state.get("container")
        if container is None:
            raise Unscored("the episode has no container to test")
        task: HarborTask = episode.state["task"]
        _run(container, "rm -rf /tests /logs/verifier && mkdir -p /tests /logs/verifier /logs/agent", timeout_s=30)
        container.put_archive("/", _tar_of(task.folder / "tests", "tests"))
        timeout = task.verifier_timeout_s
        code, _ = _run(container, "bash /tests/test.sh > /logs/verifier/test-stdout.txt 2>&1", timeout_s=timeout)
        output = (_read_file(container, "/logs/verifier/test-stdout.txt") or "").strip()
        tail = f"; its output ends: {output[-300:]!r}" if output else ""
        if code is None:
            raise Unscored(f"the tests did not finish within their {timeout:g} s (task.toml [verifier].timeout_sec){tail}")
        text = _read_file(container, "/logs/verifier/reward.txt")
        raw = _read_file(container, "/logs/verifier/reward.json") if text is None else None
        if text is None and raw is None:
            raise Unscored(f"the tests wrote no reward file (/logs/verifier/reward.txt or reward.json; test.sh exited {code}){tail}")
        value = _reward(text, raw, key=self.env.reward_key)
        return Score(value, f"the task's tests wrote reward {value:g} (test.sh exited {code})")


def _reward(text: str | None, raw: str | None, *, key: str | None) -> float:
    """The reward of Harbor's reward.txt (``text``) or reward.json (``raw``); Unscored when there is none."""
    if text is not None:
        try:
            value = float(text.strip())
        except ValueError:
            raise Unscored(f"reward.txt holds {text.strip()[:80]!r}, not a number") from None
    else:
        try:
            rewards = json.loads(raw or "")
        except ValueError:
            raise Unscored(f"reward.json does not parse: {(raw or '')[:80]!r}") from None
        if isinstance(rewards, (int, float)) and not isinstance(rewards, bool):
            rewards = {"reward": rewards}
        if not isinstance(rewards, dict):
            raise Unscored(f"reward.json holds {type(rewards).__name__}, not an object of rewards")
        name = key or ("reward" if "reward" in rewards else next(iter(rewards)) if len(rewards) == 1 else None)
        if name is None or name not in rewards:
            raise Unscored(f"reward.json holds the rewards {sorted(rewards)} and none is chosen (import with --reward-key NAME)")
        value = rewards[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise Unscored(f"reward.json's {name} is {value!r}, not a number")
        value = float(value)
    if not 0.0 <= value <= 1.0:
        raise Unscored(f"the tests wrote reward {value:g}, outside [0, 1]")
    return value


class HarborEnv(ChatEnv):
    """Harbor tasks as one environment (see the module docstring).

    Args:
        tasks: the task folders' names under ``folder/tasks``.
        digests: each task folder's digest at import; a task whose files changed since is refused.
        test_tasks: the tasks of the ``test`` split, the others being ``train``; None: every task in both.
        reward_key: the reward of a ``reward.json`` that holds several.
        command_timeout_s: how long each command block may run; max_output_chars: output shown per turn.
        folder: the environment's folder.
    """

    max_turns = 20

    def __init__(
        self,
        *,
        tasks: list[str],
        digests: dict[str, str],
        test_tasks: list[str] | None = None,
        reward_key: str | None = None,
        command_timeout_s: float = 60.0,
        max_output_chars: int = 4000,
        folder: str | Path,
        max_turns: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(max_turns=max_turns, render_mode=render_mode)
        root = Path(folder) / TASKS_DIR
        self._tasks: dict[str, HarborTask] = {}
        for name in tasks:
            try:
                task = read_task(root / name)
            except ValueError as exc:
                raise InvalidOptionError(self.env_name, "tasks", str(exc)) from None
            found = folder_digest(root / name)
            if digests.get(name) != found:
                raise InvalidOptionError(self.env_name, "tasks", f"the files of task {name} changed since the import "
                                         f"({found}, imported {digests.get(name)}): import it again")  # fmt: skip
            self._tasks[name] = task
        unknown = sorted(set(test_tasks or ()) - set(self._tasks))
        if unknown:
            raise InvalidOptionError(self.env_name, "test_tasks", f"not among the tasks: {', '.join(unknown)}")
        self.digests, self.reward_key = dict(digests), reward_key
        self.test_tasks = list(test_tasks) if test_tasks else None
        self.command_timeout_s, self.max_output_chars = float(command_timeout_s), int(max_output_chars)
        self._client: Any = None
        self._images: dict[str, str] = {}
        # Containers of episodes not yet torn down: removed if the environment is dropped unclosed, at
        # the latest when the interpreter exits (a process that died leaves them to the docker runtime's sweep).
        self._containers: dict[str, Any] = {}
        self._finalizer = weakref.finalize(self, _remove_containers, self._containers)
        self.rubric = Rubric([HarborTests(self)])

    def tasks(self, split: str) -> list[Task]:
        if self.test_tasks is None:
            names = list(self._tasks)
        elif split == "test":
            names = self.test_tasks
        else:
            names = [n for n in self._tasks if n not in self.test_tasks]
        return [{"id": name} for name in names]

    def get_task(self, task_id: str, split: str) -> Task:
        if task_id not in {t["id"] for t in self.tasks(split)}:
            raise TaskNotFoundError(self.env_name, task_id, (t["id"] for t in self.tasks(split)))
        return {"id": task_id}

    def initial_messages(self, task: Task) -> list[Msg]:
        return [system(SYSTEM_PROMPT), user(self._tasks[task["id"]].instruction.strip())]

    def reference_action(self, episode: Episode) -> str | None:
        """The task's solution/solve.sh as one command block, then a message that ends the episode."""
        solution = self._tasks[episode.task_id].solution
        if solution is None:
            return None
        return f"```bash\n{solution.strip()}\n```" if episode.turn == 0 else "Done."

    # --- the episode ----------------------------------------------------------------------------

    def setup_episode(self, episode: Episode) -> None:
        from envhub.runtime.docker import OWNER_LABEL
        from envhub.runtime.images import LABEL

        task = self._tasks[episode.task_id]
        client = self._docker()
        try:
            image = self._images.get(task.name) or task_image(task, client=client)
        except RuntimeError as exc:
            raise EnvironmentFailure(self.env_name, "setup_episode", str(exc)) from None
        self._images[task.name] = image
        memory = f"{task.memory_mb}m"
        labels = {OWNER_LABEL: str(os.getpid()), f"{LABEL}.ref": f"harbor:{task.name}", f"{LABEL}.harbor-task": task.name}
        try:
            container = client.containers.run(
                image, entrypoint=["sleep", "infinity"], command=[], detach=True, labels=labels, user="0:0",
                network_mode="none", cap_drop=["ALL"], security_opt=["no-new-privileges"], mem_limit=memory,
                memswap_limit=memory, nano_cpus=int(task.cpus * 1e9), pids_limit=256, ipc_mode="private",
            )  # fmt: skip
        except Exception as exc:  # the engine refused it (no sleep in the image, a bad limit...)
            raise EnvironmentFailure(self.env_name, "setup_episode", f"task {task.name}: the container did not start: {exc}") from None
        self._containers[container.id] = container
        episode.state.update(container=container, task=task)

    def respond(self, episode: Episode, action: str) -> Reply:
        blocks = [b.strip() for b in _BLOCK.findall(action) if b.strip()]
        if not blocks:
            return Reply(done=True)
        parts = []
        if len(blocks) > MAX_BLOCKS:  # a turn is a few commands, not a shotgun of them
            parts.append(f"(only the first {MAX_BLOCKS} of your {len(blocks)} command blocks are run)")
            blocks = blocks[:MAX_BLOCKS]
        for block in blocks:
            code, output = _run(episode.state["container"], block, timeout_s=self.command_timeout_s)
            status = f"timed out after {self.command_timeout_s:g} s" if code is None else f"exit code {code}"
            if len(output) > self.max_output_chars:
                output = output[: self.max_output_chars // 2] + "\n[... output cut ...]\n" + output[-self.max_output_chars // 2 :]
            parts.append(f"$ {block.splitlines()[0][:200]}{' ...' if chr(10) in block else ''}\n({status})\n{output}".rstrip())
        return Reply(messages=[user("\n\n".join(parts))])

    def teardown_episode(self, episode: Episode) -> None:
        container = episode.state.pop("container", None)
        if container is not None:
            self._containers.pop(container.id, None)
            _remove_containers({container.id: container})

    def close(self) -> None:
        super().close()
        self._finalizer()

    def _docker(self) -> Any:
        if self._client is None:
            from envhub.runtime.docker import sweep_orphans
            from envhub.runtime.images import docker_client

            self._client = docker_client()
            sweep_orphans(self._client)  # containers of a process that died (a process runtime's server, killed)
        return self._client
