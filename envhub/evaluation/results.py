"""An evaluation's output folder: ``run.json``, ``results.jsonl``, ``summary.json``.

``results.jsonl`` holds one JSON line per finished episode, appended and flushed as each ends, so a
run killed at any moment keeps every episode it finished; a half-written last line (the process
died mid-write) is cut off when the run resumes. Each line carries its ``key`` (task index and
sample index), so a resumed run skips exactly the episodes already written: none is lost and none
is counted twice.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from envhub.errors import EvalRunError
from envhub.evaluation.stats import Estimate, estimate, pass_at_k, proportion

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
REPORT_FILE = "report.html"
#: Outputs are for sharing: readable by everyone, like any file a command writes (write_atomic's
#: default, 0600, is for secrets and config).
OUTPUT_MODE = 0o644


def episode_key(task_index: int, sample: int) -> str:
    return f"{task_index}/{sample}"


def read_results(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Every complete record of ``path``; a torn last line is dropped (and cut from the file with ``repair``)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    seen: set[str] = set()
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end == -1:  # no newline: the process died while writing this line
            break
        line = data[pos:end].strip()
        if line:
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise EvalRunError(
                    str(path.parent), f"{path.name} has a damaged line at byte {pos}: {exc}",
                    hint="move the folder away and run again, or pass --overwrite",
                ) from exc
            key = record.get("key")
            if key in seen:  # never count an episode twice, whatever happened to the file
                pos = end + 1
                good_end = pos
                continue
            seen.add(key)
            records.append(record)
        pos = end + 1
        good_end = pos
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


class ResultsWriter:
    """Appends records to ``results.jsonl``, one flushed line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._file.flush()  # in the OS's hands now: a killed process loses nothing written

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


@dataclass
class Summary:
    """What ``summary.json`` holds: the run's aggregate numbers."""

    env: str
    model: str
    episodes: int
    errors: int
    error_rate: float
    reward: dict[str, Any]
    pass_at_k: dict[str, float]
    pass_threshold: float
    criteria: dict[str, dict[str, Any]]
    turns: dict[str, Any]
    truncation_rate: float
    termination_rate: float
    tasks: int
    samples_per_task: int
    rubric_hashes: list[str]
    env_digest: str | None
    timing: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    error_types: dict[str, int] = field(default_factory=dict)
    out_dir: str = ""
    pass_rate: dict[str, Any] = field(default_factory=dict)
    """Episodes whose reward reached ``pass_threshold``, with Wilson's interval over episodes."""
    first_error: dict[str, Any] | None = None
    """The first errored episode's key, type, message and where it happened (None: no errors)."""
    adapter: dict[str, Any] | None = None
    """The LoRA adapter evaluated: ``path`` and, when its provenance.json was found, ``training_run``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reward_mean(self) -> float:
        return self.reward["mean"]

    @property
    def model_label(self) -> str:
        """The model as a reader needs it: its name, plus the adapter's path when there is one."""
        if not self.adapter:
            return self.model
        return f"{self.model} + adapter {self.adapter.get('path')}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _clean(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


#: Rewards and criterion scores lie in [0, 1]: their intervals must too.
UNIT = (0.0, 1.0)


def _est(values: list[float], *, bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    return _plain(estimate(values, bounds=bounds))


def _plain(e: Estimate) -> dict[str, Any]:
    return {k: (_clean(v) if not isinstance(v, list) else [_clean(x) for x in v]) for k, v in e.to_dict().items()}


def _adapter(model_info: dict[str, Any]) -> dict[str, Any] | None:
    """The adapter a record's model names (see LocalPolicy.describe), or None for a bare model."""
    if not model_info.get("adapter"):
        return None
    out: dict[str, Any] = {"path": model_info["adapter"]}
    if model_info.get("adapter_run"):
        out["training_run"] = model_info["adapter_run"]
    return out


def summarise(
    records: Iterable[dict[str, Any]],
    *,
    pass_threshold: float = 1.0,
    wall_s: float | None = None,
    ran: int | None = None,
) -> Summary:
    """Aggregate episode records. Errored episodes are counted in the error rate, not in the reward."""
    records = sorted(records, key=lambda r: (r["task_index"], r["sample"]))
    ok = [r for r in records if not r.get("error")]
    rewards = [float(r["reward"]) for r in ok]
    # pass@k: per task, how many of its samples reached the threshold
    by_task: dict[int, list[bool]] = defaultdict(list)
    for r in ok:
        by_task[r["task_index"]].append(float(r["reward"]) >= pass_threshold - 1e-9)
    samples = max((len(v) for v in by_task.values()), default=0)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= samples]
    passes: dict[str, float] = {}
    for k in ks:
        values = [pass_at_k(len(v), sum(v), k) for v in by_task.values() if len(v) >= k]
        if values:
            passes[f"pass@{k}"] = sum(values) / len(values)
    criteria: dict[str, list[float]] = defaultdict(list)
    unscored: dict[str, int] = defaultdict(int)
    weights: dict[str, float] = {}
    for r in ok:
        for name, c in ((r.get("rubric") or {}).get("criteria") or {}).items():
            weights[name] = c.get("weight", 0.0)
            if c.get("score") is None:
                unscored[name] += 1
            else:
                criteria[name].append(float(c["score"]))
    crit_summary = {
        name: {**_est(criteria.get(name, []), bounds=UNIT), "weight": weights[name], "unscored": unscored.get(name, 0)}
        for name in weights
    }
    turns = [int(r.get("turns", 0)) for r in ok]
    n = len(records)
    error_types: dict[str, int] = defaultdict(int)
    for r in records:
        if r.get("error"):
            error_types[r["error"].get("type", "Error")] += 1
    model_s = [r["timings"]["model_s"] for r in ok if r.get("timings")]
    env_s = [r["timings"]["env_s"] for r in ok if r.get("timings")]
    timing: dict[str, float] = {}
    if model_s:
        timing["model_s_mean"] = sum(model_s) / len(model_s)
        timing["env_s_mean"] = sum(env_s) / len(env_s)
    if wall_s is not None:
        timing["wall_s"] = wall_s
        timing["episodes_run"] = n if ran is None else ran
        timing["episodes_per_s"] = timing["episodes_run"] / wall_s if wall_s > 0 else 0.0
    completion = [r.get("usage", {}).get("completion_tokens") for r in ok]
    completion = [c for c in completion if isinstance(c, (int, float))]
    tokens = {"completion_mean": sum(completion) / len(completion)} if completion else {}
    first = records[0] if records else {}
    hashes = sorted({r.get("rubric_hash") for r in records if r.get("rubric_hash")})
    failed = next((r for r in records if r.get("error")), None)
    first_error = None
    if failed is not None:
        first_error = {"key": failed["key"], **{k: failed["error"].get(k) for k in ("type", "message", "where")}}
    passed = sum(float(r["reward"]) >= pass_threshold - 1e-9 for r in ok)
    model_info = (first.get("model") or {}) if records else {}
    return Summary(
        env=first.get("env", {}).get("ref", "?") if records else "?",
        model=model_info.get("name", "?"),
        episodes=n,
        errors=n - len(ok),
        error_rate=(n - len(ok)) / n if n else 0.0,
        reward=_est(rewards, bounds=UNIT),
        pass_at_k=passes,
        pass_threshold=pass_threshold,
        criteria=crit_summary,
        turns={**_est([float(t) for t in turns]), "max": max(turns, default=0)},
        truncation_rate=sum(bool(r.get("truncated")) for r in ok) / len(ok) if ok else 0.0,
        termination_rate=sum(bool(r.get("terminated")) for r in ok) / len(ok) if ok else 0.0,
        tasks=len({r["task_index"] for r in records}),
        samples_per_task=samples,
        rubric_hashes=hashes,
        env_digest=first.get("env", {}).get("digest") if records else None,
        timing=timing,
        tokens=tokens,
        error_types=dict(error_types),
        pass_rate={**_plain(proportion(passed, len(ok))), "threshold": pass_threshold},
        first_error=first_error,
        adapter=_adapter(model_info),
    )


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], Summary]:
    """(run.json, records, summary) of an evaluation folder; EvalRunError when it is not one."""
    run_dir = Path(run_dir)
    results = run_dir / RESULTS_FILE
    if not results.is_file():
        raise EvalRunError(
            str(run_dir), f"no {RESULTS_FILE} here: not an evaluation output folder",
            hint="pass a folder written by `envhub eval ... --out DIR`",
        )
    run = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).is_file() else {}
    records = read_results(results)
    threshold = float(run.get("config", {}).get("pass_threshold", 1.0))
    summary = summarise(records, pass_threshold=threshold)
    summary.out_dir = str(run_dir)
    return run, records, summary
