"""The side of an imported verifiers environment that runs under verifiers' own interpreter.

verifiers 0.4 pins ``mcp==2.0.0`` and ``openai<3``, which envhub's own environment cannot hold
(openenv's fastmcp needs ``mcp<2``), so verifiers lives in a virtual environment of its own
(``make verifiers``: ``.venv-verifiers``). This file is run there as a script (``python
verifiers_worker.py``): it imports nothing of envhub, only the standard library and verifiers, and
answers one JSON request a line on stdin with one JSON answer a line on stdout:

- ``{"op": "load", "module": M, "path": P, "args": {...}, "limit": N}``: import ``M`` (from folder
  ``P`` when given) and read its tasks and its rubric's reward functions. A module exporting a
  ``Taskset`` subclass in ``__all__`` is a verifiers 0.4 taskset (its tasks' ``@vf.reward``
  methods and plugged rewards, with their weights); a module with ``load_environment(**kwargs)``
  is the older form (its ``dataset`` and its rubric's functions and weights), where it still loads.
- ``{"op": "score", "index": I, "messages": [...]}``: each reward function of task ``I`` on the
  conversation, one at a time, so that one that raises is reported under its name and the others
  still score.

Every answer is ``{"ok": true, ...}`` or ``{"ok": false, "stage": ..., "error": ...}``; what the
source prints goes to stderr, so it never garbles an answer.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import itertools
import json
import math
import sys
import traceback
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path, and its sibling verifiers.py (envhub's
# importer) would shadow the verifiers package: take the folder off.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


class Refused(Exception):
    """The source cannot be imported as it is: the message says why and what to do."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") if isinstance(p, dict) else str(getattr(p, "text", "")) for p in content)
    return "" if content is None else str(content)


def _plain(message: Any) -> dict[str, str]:
    if isinstance(message, dict):
        return {"role": str(message.get("role")), "content": _text(message.get("content"))}
    return {"role": str(message.role), "content": _text(getattr(message, "content", ""))}


def _call(fn: Any, kwargs: dict[str, Any]) -> Any:
    """``fn`` with the keyword arguments it names (all of them if it takes ``**kwargs``), awaited if async."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    result = fn(**kwargs)
    return asyncio.run(result) if inspect.isawaitable(result) else result


def _reward_value(value: Any) -> float:
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)):
        kind = "keyed scores" if isinstance(value, dict) else type(value).__name__
        raise TypeError(f"returned {kind} {value!r:.80}, not a number")
    value = float(value)
    if math.isnan(value):
        raise ValueError("returned NaN")
    return value


class TasksetSource:
    """A verifiers 0.4 taskset: ``Taskset.load()``'s tasks, scored by their ``@vf.reward`` functions."""

    style = "taskset"

    def __init__(self, module: Any, name: str, args: dict[str, Any], limit: int) -> None:
        import verifiers.v1 as vf
        from verifiers.v1.utils.generic import concrete_type

        self.vf = vf
        classes = [getattr(module, n, None) for n in getattr(module, "__all__", [])]
        found = [c for c in classes if isinstance(c, type) and issubclass(c, vf.Taskset) and c is not vf.Taskset]
        if len(found) != 1:
            raise Refused("load", f"`{name}` exports {len(found)} Taskset subclasses in __all__; a taskset exports exactly one")
        cls = found[0]
        config_cls = concrete_type(cls, vf.TasksetConfig, origin=vf.Taskset) or vf.TasksetConfig
        try:
            config = config_cls.model_validate({"id": name, **args})
            self.taskset = cls(config)
            self.tasks = list(itertools.islice(iter(self.taskset), limit))
        except Exception as exc:
            raise Refused("load", f"{cls.__name__}({args}) fails: {type(exc).__name__}: {exc}") from exc
        if not self.tasks:
            raise Refused("load", f"{cls.__name__}.load() yields no task")
        self.class_name = cls.__name__
        first = self.tasks[0]
        if first.NEEDS_CONTAINER or first.toolsets(first.config) or cls.toolsets(config):
            raise Refused("load", f"{cls.__name__}'s tasks need a container or tool servers; only chat tasksets are imported")
        if first.config.judges:
            raise Refused("load", f"{cls.__name__}'s tasks are scored by judges (an LLM): not imported yet")
        hooks = first.hooks("reward")
        if not hooks:
            raise Refused("load", f"{type(first).__name__} has no reward function (@vf.reward)")
        needs_runtime = [fn.__name__ for fn in hooks if self._needs_runtime(fn)]
        if needs_runtime:
            raise Refused("load", f"the rewards {', '.join(needs_runtime)} read the task's runtime (a sandbox): not imported")
        self.rewards = [{"name": fn.__name__, "weight": float(getattr(fn, "_vf_weight", 1.0))} for fn in hooks]

    @staticmethod
    def _needs_runtime(fn: Any) -> bool:
        param = inspect.signature(fn).parameters.get("runtime")
        return param is not None and param.default is inspect.Parameter.empty

    def task_records(self) -> list[dict[str, Any]]:
        out = []
        for task in self.tasks:
            data = task.data
            if data.prompt is None:
                raise Refused("load", f"task {data.idx} has no prompt (the user opens it): not imported")
            messages = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
            if isinstance(data.prompt, str):
                messages.append({"role": "user", "content": data.prompt})
            else:
                messages += [_plain(m) for m in data.prompt]
            answer = getattr(data, "answer", None)
            out.append({"id": data.id or data.name or str(data.idx), "messages": messages,
                        "answer": answer if isinstance(answer, str) else None})  # fmt: skip
        return out

    def _trace(self, task: Any, messages: list[dict[str, str]]) -> Any:
        vf = self.vf
        from verifiers.v1.graph import MessageNode

        kinds = {"system": vf.SystemMessage, "user": vf.UserMessage, "assistant": vf.AssistantMessage}
        prompt_len = len(self.task_records_cache[task.data.idx]["messages"])
        nodes = [
            MessageNode(parent=i - 1 if i else None, message=kinds[m["role"]](content=m["content"]),
                        sampled=m["role"] == "assistant" and i >= prompt_len)  # fmt: skip
            for i, m in enumerate(messages)
        ]
        info = vf.TraceTask(type=type(task).__name__, data=task.data, key=task.key, hash=task.hash)
        trace = vf.Trace(task=info, agent=vf.AgentInfo(config=vf.AgentConfig()), nodes=nodes)
        trace.is_completed = trace.ok = True
        return trace

    def score(self, index: int, messages: list[dict[str, str]]) -> dict[str, Any]:
        task = self.tasks[index]
        trace = self._trace(task, messages)
        available = {"task": task.data, "trace": trace}
        return {fn.__name__: _outcome(lambda fn=fn: _call_available(fn, available)) for fn in task.hooks("reward")}


def _call_available(fn: Any, available: dict[str, Any]) -> Any:
    from verifiers.v1.utils.decorators import invoke

    result = invoke(fn, available)
    return asyncio.run(result) if inspect.isawaitable(result) else result


def _outcome(run: Any) -> dict[str, Any]:
    """``{"score": x}``, or ``{"error": why}`` for a reward function that raised or gave no number."""
    try:
        return {"score": _reward_value(run())}
    except Exception as exc:  # the source's reward function: whatever it raises is reported, never scored
        return {"error": f"{type(exc).__name__}: {exc}"}


class LegacySource:
    """An environment package of the older form: ``load_environment(**kwargs)`` returning an
    environment with a ``dataset`` of rows and a ``rubric`` of reward functions and weights."""

    style = "load_environment"

    def __init__(self, module: Any, name: str, args: dict[str, Any], limit: int) -> None:
        try:
            env = module.load_environment(**args)
        except Exception as exc:
            raise Refused("load", f"`{name}.load_environment(**{args})` fails under verifiers "
                                  f"{_version('verifiers')}: {type(exc).__name__}: {exc}") from exc  # fmt: skip
        dataset = getattr(env, "dataset", None)
        if dataset is None:
            dataset = getattr(env, "eval_dataset", None)
        rubric = getattr(env, "rubric", None)
        if dataset is None or rubric is None:
            raise Refused("load", f"`{name}.load_environment()` returned {type(env).__name__}, which has no dataset and rubric")
        funcs = _first_attr(rubric, ("get_reward_funcs", "reward_funcs", "funcs"))
        weights = _first_attr(rubric, ("get_reward_weights", "reward_weights", "weights"))
        funcs = list(funcs or [])
        weights = list(weights) if weights is not None else [1.0] * len(funcs)
        if not funcs or len(weights) != len(funcs):
            raise Refused("load", f"the rubric has {len(funcs)} reward functions and {len(weights)} weights")
        self.class_name = type(env).__name__
        self.funcs = funcs
        self.parser = getattr(rubric, "parser", None) or getattr(env, "parser", None)
        self.rewards = [{"name": getattr(f, "__name__", f"reward_{i}"), "weight": float(w)} for i, (f, w) in enumerate(zip(funcs, weights))]
        self.system_prompt = getattr(env, "system_prompt", None)
        self.rows = [dict(row) for row in itertools.islice(iter(dataset), limit)]
        if not self.rows:
            raise Refused("load", f"`{name}.load_environment()`'s dataset is empty")

    def task_records(self) -> list[dict[str, Any]]:
        out = []
        for i, row in enumerate(self.rows):
            prompt = row.get("prompt")
            if isinstance(prompt, list):
                messages = [_plain(m) for m in prompt]
            elif isinstance(row.get("question"), str):
                messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
                messages.append({"role": "user", "content": row["question"]})
            else:
                raise Refused("load", f"dataset row {i} has neither `prompt` messages nor a `question`")
            answer = row.get("answer")
            out.append({"id": str(row.get("id", i)), "messages": messages, "answer": answer if isinstance(answer, str) else None})
        return out

    def score(self, index: int, messages: list[dict[str, str]]) -> dict[str, Any]:
        row = self.rows[index]
        prompt_len = len(self.task_records_cache[index]["messages"])
        kwargs = {"prompt": messages[:prompt_len], "completion": messages[prompt_len:], "answer": row.get("answer", ""),
                  "info": row.get("info", {}), "task": row.get("task", "default"), "state": {}, "parser": self.parser}  # fmt: skip
        out = {}
        for reward in self.rewards:
            fn = self.funcs[[r["name"] for r in self.rewards].index(reward["name"])]
            out[reward["name"]] = _outcome(lambda fn=fn: _call(fn, dict(kwargs)))
        return out


def _first_attr(obj: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value() if callable(value) and not isinstance(value, (list, tuple)) else value
    return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _distribution(module: str) -> tuple[str, str] | None:
    """(distribution, version) that installed ``module``, when an installed distribution did."""
    top = module.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        version = _version(dist)
        if version:
            return dist, version
    return None


def load(request: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    name = request["module"]
    if request.get("path"):
        sys.path.insert(0, request["path"])
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise Refused("missing", f"no module `{name}` under {sys.executable}") from exc
        raise Refused("import", f"`import {name}` fails: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise Refused("import", f"`import {name}` fails: {type(exc).__name__}: {exc}") from exc
    import verifiers.v1 as vf

    exported = [getattr(module, n, None) for n in getattr(module, "__all__", [])]
    if any(isinstance(c, type) and issubclass(c, vf.Taskset) for c in exported):
        source: Any = TasksetSource(module, name, request.get("args") or {}, request["limit"])
    elif callable(getattr(module, "load_environment", None)):
        source = LegacySource(module, name, request.get("args") or {}, request["limit"])
    else:
        raise Refused("load", f"`{name}` is no verifiers environment: it exports no Taskset subclass in __all__ "
                              "and has no load_environment()")  # fmt: skip
    source.task_records_cache = source.task_records()
    description = {
        "style": source.style, "class": source.class_name, "rewards": source.rewards, "tasks": source.task_records_cache,
        "verifiers": _version("verifiers"), "license": (importlib.metadata.metadata("verifiers").get("License-Expression") or "MIT"),
        "distribution": None if request.get("path") else _distribution(name), "python": sys.executable,
    }  # fmt: skip
    return source, description


def main() -> None:
    answers = sys.stdout
    sys.stdout = sys.stderr  # whatever the source prints must not garble an answer
    source = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "load":
                source, answer = load(request)
            elif source is None:
                raise Refused("load", "nothing loaded yet")
            else:
                answer = {"rewards": source.score(int(request["index"]), request["messages"])}
            answer = {"ok": True, **answer}
        except Refused as exc:
            answer = {"ok": False, "stage": exc.stage, "error": str(exc)}
        except Exception as exc:  # a bug here, not the source's: say where
            answer = {"ok": False, "stage": "worker", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        answers.write(json.dumps(answer, default=str) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
