"""Hugging Face ``datasets`` from envhub: an environment's tasks, and the episodes of an evaluation.

Two shapes, each a :class:`datasets.Dataset`:

- tasks (:func:`task_dataset`): one row per task, ``prompt`` (the first messages of its episode),
  ``task_id``, ``split``, ``seed``, and who asked: ``env`` (``namespace/name@version``),
  ``env_digest`` (the artifact's sha256), ``env_kwargs`` (JSON), ``rubric_hash``. A row replays
  with ``env.reset(seed=row["seed"], options={"task_id": row["task_id"], "split": row["split"]})``.
- episodes (:func:`run_dataset`): one row per episode of an ``envhub eval`` run folder: the whole
  conversation (``messages``), ``reward``, ``step_rewards``, the rubric's breakdown (``rubric``: a
  list of ``{name, score, weight, reason}``, the same columns for every environment), identities
  and the model, ready to share or to filter for SFT. A training run's folder gives its
  ``rollouts.jsonl`` the same way, with the trainer's columns added: ``step``, ``group``,
  ``advantage``, ``shaped_reward`` and ``trained`` (its group was in the step's batch).

:func:`save` writes a dataset folder that ``datasets.load_from_disk(OUT)`` reads, with the same
rows in ``OUT/data.parquet`` for ``load_dataset("parquet", data_files=...)`` and any Parquet reader.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envhub.errors import ArtifactError, EvalRunError, InvalidOptionError

if TYPE_CHECKING:
    import datasets

__all__ = ["PARQUET_FILE", "run_dataset", "run_rows", "save", "task_dataset", "task_rows"]

#: The Parquet copy of the rows inside a saved dataset folder.
PARQUET_FILE = "data.parquet"
#: Tasks exported from an environment that generates them, when no count is given.
DEFAULT_GENERATED = 100
# A generator may repeat a task; drawing stops after this many seeds per task asked for.
_DRAWS_PER_TASK = 20


def _messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Plain dicts (the env's are read-only), keeping a tool message's ``name``."""
    return [{k: m[k] for k in ("role", "content", "name") if k in m} for m in messages]


def _listed_task_ids(env: Any, split: str) -> list[str] | None:
    """The ids of ``split`` in order, for an environment that lists its tasks; None for a generator
    (or a remote environment, whose task list is not part of the session protocol)."""
    tasks = getattr(getattr(env, "unwrapped", env), "tasks", None)
    if tasks is None:
        return None
    try:
        return [str(task["id"]) for task in tasks(split)]
    except NotImplementedError:
        return None


def task_rows(env: Any, *, split: str = "train", n: int | None = None, env_kwargs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per task of ``split`` of the open environment ``env`` (see the module docstring).

    An environment that lists its tasks gives its first ``n`` (all without ``n``); one that
    generates them gives the distinct tasks drawn by seeds 0, 1, 2, ... (``n`` of them, 100 by
    default).
    """
    if n is not None and n < 1:
        raise InvalidOptionError(env.identity.ref, "n", f"must be at least 1, got {n}")
    identity = env.identity
    common = {
        "split": split,
        "env": identity.ref,
        "env_digest": identity.digest,
        "env_kwargs": json.dumps(dict(env_kwargs or {}), sort_keys=True),
        "rubric_hash": getattr(getattr(env, "rubric", None), "hash", None),
    }
    listed = _listed_task_ids(env, split)
    rows: list[dict[str, Any]] = []
    if listed is not None:
        for seed, task_id in enumerate(listed[:n] if n is not None else listed):
            obs, info = env.reset(seed=seed, options={"task_id": task_id, "split": split})
            rows.append({"prompt": _messages(obs), "task_id": info["task_id"], "seed": seed, **common})
        return rows
    wanted = n if n is not None else DEFAULT_GENERATED
    seen: set[str] = set()
    for seed in range(wanted * _DRAWS_PER_TASK):
        if len(rows) == wanted:
            break
        _, info = env.reset(seed=seed, options={"split": split})
        if info["task_id"] in seen:
            continue
        seen.add(info["task_id"])
        # The row's prompt is what its replay (by task id, as documented) starts from.
        obs, _ = env.reset(seed=seed, options={"task_id": info["task_id"], "split": split})
        rows.append({"prompt": _messages(obs), "task_id": info["task_id"], "seed": seed, **common})
    return rows


def task_dataset(
    env_id: str | os.PathLike[str],
    *,
    split: str = "train",
    n: int | None = None,
    runtime: str = "inprocess",
    **env_kwargs: Any,
) -> datasets.Dataset:
    """The tasks of ``split`` of ``env_id`` (a name, ``ns/name@spec`` or a folder) as a dataset."""
    from datasets import Dataset

    from envhub.runtime.make import make

    env = make(env_id, runtime=runtime, **env_kwargs)
    try:
        return Dataset.from_list(task_rows(env, split=split, n=n, env_kwargs=env_kwargs))
    finally:
        env.close()


# --- evaluation runs -----------------------------------------------------------------------------

_RESULTS = "results.jsonl"  # envhub eval's per-episode file (envhub.evaluation.results.RESULTS_FILE)
_ROLLOUTS = "rollouts.jsonl"  # envhub train's per-episode file (trainers.outputs.ROLLOUTS_FILE)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file that a crash may have cut mid-line."""
    lines = path.read_bytes().split(b"\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]  # after the last newline: torn or empty


def _breakdown(rubric: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    criteria = (rubric or {}).get("criteria") or {}
    return [
        {"name": name, "score": c.get("score"), "weight": c.get("weight"), "reason": c.get("reason")}
        for name, c in criteria.items()
    ]


def _episode_row(record: Mapping[str, Any]) -> dict[str, Any]:
    env = record.get("env") or {}
    model = record.get("model") or {}
    rubric = record.get("rubric") or {}
    error = record.get("error")
    return {
        "messages": _messages(record.get("messages") or []),
        "reward": record.get("reward"),
        "step_rewards": [float(r) for r in record.get("step_rewards") or []],
        "rubric": _breakdown(rubric),
        "rubric_total": rubric.get("total"),
        "rubric_hash": rubric.get("hash") or record.get("rubric_hash"),
        "task_id": record.get("task_id"),
        "split": record.get("split"),
        "seed": record.get("seed"),
        "sample": record.get("sample"),
        "env": env.get("ref"),
        "env_digest": env.get("digest"),
        "model": model.get("name") if isinstance(model, Mapping) else str(model),
        "model_info": json.dumps(model, sort_keys=True, default=str),
        "turns": record.get("turns"),
        "terminated": record.get("terminated"),
        "truncated": record.get("truncated"),
        "error": None if not error else f"{error.get('type')}: {error.get('message')}",
    }


def _training_row(record: Mapping[str, Any]) -> dict[str, Any]:
    row = _episode_row(record)
    for name in ("step", "group", "advantage", "shaped_reward", "trained"):
        row[name] = record.get(name)
    return row


def run_rows(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per episode of the run in ``run_dir``: an ``envhub eval`` run's in task then sample
    order, an ``envhub train`` run's (its rollouts.jsonl) in step then group order."""
    folder = Path(run_dir)
    results = folder / _RESULTS
    if results.is_file():
        records = _read_jsonl(results)
        records.sort(key=lambda r: (r.get("task_index", 0), r.get("sample", 0)))
        return [_episode_row(r) for r in records]
    if (folder / _ROLLOUTS).is_file():
        records = _read_jsonl(folder / _ROLLOUTS)
        records.sort(key=lambda r: (r.get("step", 0), r.get("group", 0)))
        return [_training_row(r) for r in records]
    if (folder / "metrics.jsonl").is_file():
        reason = f"is a training run from before the trainer wrote {_ROLLOUTS}: it holds no episodes"
        hint = "evaluate its adapter (`envhub eval ENV --adapter RUN/adapter`) and export that run"
    else:
        reason, hint = f"has no {_RESULTS} or {_ROLLOUTS}", "pass the folder an `envhub eval` or `envhub train` run wrote"
    raise EvalRunError(str(folder), reason, hint=hint)


def run_dataset(run_dir: str | os.PathLike[str]) -> datasets.Dataset:
    """The episodes of an ``envhub eval`` or ``envhub train`` run folder as a dataset (see the module docstring)."""
    from datasets import Dataset

    rows = run_rows(run_dir)
    if not rows:
        raise EvalRunError(str(run_dir), "holds no finished episode", hint="let the run finish a step (or an episode) first")
    return Dataset.from_list(rows)


# --- writing -------------------------------------------------------------------------------------

def save(dataset: datasets.Dataset, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``dataset`` to the folder ``out`` (``load_from_disk``) plus ``out/data.parquet``.

    The folder is written beside ``out`` and renamed into place, so a failed export leaves no
    half-written dataset behind.
    """
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if not overwrite:
            raise ArtifactError(f"{target} already exists", hint="pass --overwrite, or name another folder")
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dataset.save_to_disk(str(tmp))
        dataset.to_parquet(str(tmp / PARQUET_FILE))
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
