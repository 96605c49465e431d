"""A training run's output folder: checkpoints and resume, metrics.jsonl, provenance.json, the adapter.

    output_dir/
      run.json                      what the run is (config, environment identities, model), written
                                    when it starts: a folder is resumed only by the same run
      metrics.jsonl                 one JSON row per step (the metric names are namespaced)
      rollouts.jsonl                one JSON row per episode: step, messages, rewards, rubric
                                    breakdown, environment identity, model (``envhub export dataset``)
      tensorboard/                  the same rows as event files, when asked for
      checkpoints/step-NNNNNN/      peft adapter, optimizer.pt, trainer_state.json, provenance.json
      adapter/                      the final peft adapter, with its provenance.json
      provenance.json               environment identities and digests, rubric hashes, config, model,
                                    code version, library versions, final metrics

Every file is written to a temporary name and renamed, so a crash never leaves half of one; a
resumed run continues from the latest complete checkpoint and keeps only the metric and rollout rows
it covers. A folder that holds another run (other environments, digests, kwargs, model, objective or
settings) is refused rather than resumed; ``overwrite`` clears it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from envhub.errors import TrainRunError
from envhub.identity.artifact import write_atomic
from envhub.runtime.env_pool import EnvPool
from trainers.config import EnvSpec, TrainConfig, config_to_dict

__all__ = ["Progress", "RunOutputs", "environment_identities", "rollout_record", "run_summary"]

_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md")
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
PROVENANCE_FILE = "provenance.json"

#: Config fields that say how a run is run, not what it trains: they may change when it resumes
#: (more steps, another device, a budget). Every other field must match the folder's run.
_RUN_FIELDS = frozenset({
    "output_dir", "steps", "resume", "overwrite", "progress", "tensorboard", "checkpoint_every",
    "max_train_seconds", "threads", "device", "backend", "weight_sync", "mixed_precision", "max_error_rate",
    "judge_base_url",
})  # fmt: skip


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str).encode(), mode=0o644)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RunOutputs:
    """The output folder of one run, from resume to the final adapter.

    ``trainer`` is the module that trains (recorded in the provenance); ``model_path`` the base
    model's folder.
    """

    def __init__(
        self, config: TrainConfig, *, trainer: str, model_path: str, environments: Sequence[dict[str, Any]] = ()
    ) -> None:
        self.config = config
        self.dir = Path(config.output_dir or ".")
        self.metrics_path = self.dir / METRICS_FILE
        self.rollouts_path = self.dir / ROLLOUTS_FILE
        self.metrics: list[dict[str, Any]] = []
        """The rows of every step so far (those a resumed run kept, then this run's)."""
        self.latest: Path | None = None
        """The last checkpoint saved or resumed from: what the final adapter is copied from."""
        self.checkpoint_step = 0
        """The step of ``latest`` (0: none)."""
        self.dropped_steps = 0
        self.environments = [dict(e) for e in environments]
        """Each environment's identity as the run's preflight found it (ref, digest), in config order."""
        self.provenance: dict[str, Any] = {
            "trainer": trainer,
            "algo": config.algo,
            "model": _model_provenance(config, model_path),
            "environments": [],
            "config": config_to_dict(config),
            "git": _git_commit(),
            "versions": _versions(),
            "started_at": _now(),
            "resumed_from_step": None,
        }
        self._tensorboard: Any = None

    # ---- which run the folder holds -----------------------------------------------------------

    def _checkpoints(self) -> list[Path]:
        root = self.dir / "checkpoints"
        return sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()) if root.is_dir() else []

    def _recorded(self) -> dict[str, Any] | None:
        """What the folder says its run is: run.json, else (a folder from before run.json) the latest
        checkpoint's or the final provenance."""
        candidates = [self.dir / RUN_FILE, *(p / PROVENANCE_FILE for p in reversed(self._checkpoints())), self.dir / PROVENANCE_FILE]
        for path in candidates:
            if path.is_file():
                with contextlib.suppress(ValueError, OSError):
                    return json.loads(path.read_text())
        return None

    def _differences(self, recorded: dict[str, Any]) -> list[str]:
        """What differs between the folder's run and this config, one ``name: old -> new`` each."""
        before = recorded.get("config") or {}
        now = config_to_dict(self.config)
        changed = [
            f"{name}: {_brief(before.get(name))} -> {_brief(now[name])}"
            for name in now
            if name not in _RUN_FIELDS and name in before and _plain(before[name]) != _plain(now[name])
        ]
        for i, (old, new) in enumerate(zip(recorded.get("environments") or [], self.environments)):
            if old.get("digest") and new.get("digest") and old["digest"] != new["digest"]:
                changed.append(f"environment {i + 1} digest: {old.get('ref')} {old['digest'][:19]} -> {new.get('ref')} {new['digest'][:19]}")
        old_model = (recorded.get("model") or {}).get("source_digest")
        new_model = self.provenance["model"].get("source_digest")
        if old_model and new_model and old_model != new_model:
            changed.append(f"model digest: {old_model[:19]} -> {new_model[:19]}")
        return changed

    def prepare(self) -> int:
        """Check that the folder is this run's (or empty), clear it when ``overwrite``, and record
        the run in run.json; returns the steps its latest checkpoint holds. Loads nothing.

        Raises TrainRunError when the folder holds another run (the difference named) or a run that
        ``resume`` False would throw away."""
        config = self.config
        checkpoints = self._checkpoints()
        steps_logged = sum(1 for line in self._lines(self.metrics_path) if line.strip())
        holds_run = bool(checkpoints or steps_logged)
        again = "pass --overwrite to start it afresh, or another --output-dir (or none: a new folder each run)"
        if config.overwrite:
            for name in ("checkpoints", "adapter", "tensorboard", ".adapter.tmp"):
                shutil.rmtree(self.dir / name, ignore_errors=True)
            for name in (RUN_FILE, METRICS_FILE, ROLLOUTS_FILE, PROVENANCE_FILE):
                (self.dir / name).unlink(missing_ok=True)
            checkpoints, holds_run = [], False
        recorded = self._recorded() if holds_run else None
        if holds_run and not config.resume:
            raise TrainRunError(str(self.dir), f"holds a run ({steps_logged} step(s) in {METRICS_FILE}) and --no-resume would discard it", hint=again)
        if recorded is not None:
            changed = self._differences(recorded)
            if changed:
                raise TrainRunError(
                    str(self.dir), f"holds another run ({'; '.join(changed)}); resuming would mix them", hint=again
                )
        self.dir.mkdir(parents=True, exist_ok=True)
        start_step = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["step"] if checkpoints else 0
        self.latest = checkpoints[-1] if checkpoints else None
        self.checkpoint_step = start_step
        if recorded is not None and holds_run:
            self.provenance["started_at"] = recorded.get("started_at", self.provenance["started_at"])
        now = _now()
        run = {
            "config": config_to_dict(config),
            "environments": self.environments,
            "model": self.provenance["model"],
            "trainer": self.provenance["trainer"],
            "started_at": self.provenance["started_at"],
            "resumed": [*(recorded or {}).get("resumed", []), now] if holds_run else [],
        }
        _write_json(self.dir / RUN_FILE, run)
        self.metrics = self._keep(self.metrics_path, start_step)
        self.dropped_steps = steps_logged - len(self.metrics)
        """Rows of metrics.jsonl past the latest checkpoint (a crash): their steps run again, identically."""
        self._keep(self.rollouts_path, start_step)
        self.provenance["resumed_from_step"] = start_step or None
        return start_step

    @staticmethod
    def _lines(path: Path) -> list[str]:
        """The complete lines of a JSONL file (a torn last line, from a crash, is left out)."""
        if not path.is_file():
            return []
        text = path.read_text()
        return text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]

    def _keep(self, path: Path, step: int) -> list[dict[str, Any]]:
        """The rows of ``path`` up to ``step``; the file is rewritten (atomically) only when some go."""
        lines = [line for line in self._lines(path) if line.strip()]
        rows = [json.loads(line) for line in lines]
        kept = [(line, row) for line, row in zip(lines, rows) if row.get("step", 0) <= step]
        if path.is_file() and (len(kept) != len(lines) or not path.read_text().endswith("\n") and path.stat().st_size):
            write_atomic(path, "".join(line + "\n" for line, _ in kept).encode(), mode=0o644)
        return [row for _, row in kept]

    def load_checkpoint(self, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        """Load the latest checkpoint (found by :meth:`prepare`) into model, optimizer and scheduler;
        returns its step (0 when there is none). Opens TensorBoard's writer when asked for."""
        if self.latest is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(self.latest / "adapter_model.safetensors")))
            device = next(model.parameters()).device
            state = torch.load(self.latest / "optimizer.pt", map_location=device, weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        if self.config.tensorboard and self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.dir / "tensorboard"))
        return self.checkpoint_step

    def resume(self, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        """:meth:`prepare`, then :meth:`load_checkpoint`: the number of steps already done."""
        self.prepare()
        return self.load_checkpoint(model, optimizer, scheduler)

    def log_rollouts(self, records: Sequence[dict[str, Any]]) -> None:
        """Append one step's episodes (:func:`rollout_record`) to rollouts.jsonl."""
        with open(self.rollouts_path, "a") as f:
            f.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)

    def log(self, row: dict[str, Any]) -> None:
        """Append one step's metrics to metrics.jsonl (and TensorBoard)."""
        self.metrics.append(row)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tensorboard is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tensorboard.add_scalar(key, value, row["step"])

    def save_checkpoint(
        self, step: int, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, environments: list[dict[str, Any]]
    ) -> Path:
        """checkpoints/step-NNNNNN/: peft adapter, optimizer state, trainer_state.json, provenance.
        Written to a temporary folder and renamed, so a crash never leaves a half checkpoint."""
        self.provenance["environments"] = environments
        root = self.dir / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{step:06d}"
        tmp = root / f".step-{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        _write_json(tmp / "provenance.json", self.provenance)
        _write_json(tmp / "trainer_state.json", {"step": step})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self.latest = final
        self.checkpoint_step = step
        return final

    def finish(self, environments: list[dict[str, Any]]) -> Path:
        """Write the final adapter (a copy of the latest checkpoint's) and provenance.json; returns
        the adapter folder (absent when the run saved no checkpoint)."""
        self.close()
        self.provenance["environments"] = environments
        self.provenance["finished_at"] = _now()
        self.provenance["final_metrics"] = self.metrics[-1] if self.metrics else None
        adapter_dir = self.dir / "adapter"
        if self.latest is not None:
            tmp = self.dir / ".adapter.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for name in _ADAPTER_FILES:
                if (self.latest / name).exists():
                    shutil.copy2(self.latest / name, tmp / name)
            _write_json(tmp / "provenance.json", self.provenance)
            shutil.rmtree(adapter_dir, ignore_errors=True)
            os.replace(tmp, adapter_dir)
        _write_json(self.dir / "provenance.json", self.provenance)
        return adapter_dir

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def environment_identities(specs: Sequence[EnvSpec], pools: Sequence[EnvPool]) -> list[dict[str, Any]]:
    """What the provenance says of each environment used so far: spec, ref, digest, rubric hash."""
    identities = []
    for spec, pool in zip(specs, pools):
        env = pool.first
        if env is None:  # not drawn yet
            continue
        identity = getattr(env, "identity", None)
        identities.append(
            {
                "spec": dataclasses.asdict(spec),
                "ref": getattr(identity, "ref", spec.name),
                "digest": getattr(identity, "digest", None),
                "rubric_hash": getattr(getattr(env, "rubric", None), "hash", None),
                "max_turns": getattr(env, "max_turns", None),
            }
        )
    return identities


def _git_commit() -> dict[str, Any] | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", str(here)], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return {"commit": commit, "trainer_dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return None


def _model_provenance(config: TrainConfig, path: str) -> dict[str, Any]:
    info: dict[str, Any] = {"name": config.model or "default", "path": path}
    marker = Path(path) / "envhub-conversion.json"
    if marker.is_file():
        info.update(json.loads(marker.read_text()))
    return info


def _versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("transformers", "peft", "envhub"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    return versions


def _plain(value: Any) -> Any:
    """A config value as JSON would hold it (tuples as lists), for comparing with a recorded one."""
    return json.loads(json.dumps(value, default=str))


def _brief(value: Any) -> str:
    """A recorded config value in a few words: an environment list as ``name?k=v*w`` items."""
    value = _plain(value)
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        parts = []
        for spec in value:
            query = "&".join(f"{k}={v}" for k, v in (spec.get("kwargs") or {}).items())
            weight = spec.get("weight", 1.0)
            runtime = spec.get("runtime", "inprocess")
            parts.append(spec["name"] + (f"?{query}" if query else "") + (f"*{weight:g}" if weight != 1 else "")
                         + ("" if runtime == "inprocess" else f" ({runtime})"))  # fmt: skip
        return " + ".join(parts)
    return json.dumps(value)


def rollout_record(
    rollout: Any, *, step: int, split: str, environment: dict[str, Any], env_kwargs: dict[str, Any], model: dict[str, Any]
) -> dict[str, Any]:
    """One episode of a step as rollouts.jsonl holds it: the fields of an ``envhub eval`` record
    (messages, reward, step_rewards, rubric, env, model, task, error) plus the trainer's own (step,
    group, shaped reward, advantage, whether it was trained on)."""
    error = None
    if rollout.error:
        kind, _, message = rollout.error.partition(": ")
        error = {"type": kind, "message": message, "where": "rollout"}
    return {
        "step": step,
        "group": rollout.group,
        "env_index": rollout.env_index,
        "seed": rollout.task_seed,
        "task_id": rollout.task_id,
        "split": split,
        "env": environment,
        "env_kwargs": env_kwargs,
        "rubric_hash": (rollout.rubric or {}).get("hash"),
        "model": model,
        "messages": rollout.messages,
        "reward": None if rollout.error else rollout.reward,
        "step_rewards": rollout.step_rewards,
        "rubric": rollout.rubric,
        "shaped_reward": None if rollout.error else rollout.shaped_reward,
        "judge_score": rollout.judge_score,
        "advantage": rollout.advantage,
        "trained": rollout.trained,
        "turns": rollout.turns,
        "terminated": rollout.done and not rollout.truncated and rollout.error is None,
        "truncated": rollout.truncated,
        "completion_tokens": rollout.completion_tokens,
        "error": error,
    }


def run_summary(metrics: Sequence[dict[str, Any]], *, output_dir: Path, adapter_dir: Path | None) -> list[str]:
    """What a finished run prints: first and last step's reward and criteria, and where its files are."""
    lines = []
    if metrics:
        first, last = metrics[0], metrics[-1]
        span = f"step {first['step']} -> {last['step']}"
        lines.append(f"reward/mean {first['reward/mean']:.3f} -> {last['reward/mean']:.3f} ({span}, {len(metrics)} steps)")
        for key in sorted(k for k in last if k.startswith("reward/criterion/")):
            lines.append(f"  {key.rsplit('/', 1)[1]}: {first.get(key, math.nan):.3f} -> {last[key]:.3f}")
        errors = sum(row.get("episodes/errors", 0) for row in metrics)
        if errors:
            total = sum(row.get("episodes/count", 0) for row in metrics)
            lines.append(f"  {errors} of {total} episodes ended in an error (episodes/first_error in metrics.jsonl)")
    files = [f"{name}" for name in (METRICS_FILE, ROLLOUTS_FILE, PROVENANCE_FILE) if (output_dir / name).exists()]
    if adapter_dir is not None and adapter_dir.is_dir():
        lines.append(f"adapter: {adapter_dir}")
    lines.append(f"files: {output_dir}/ ({', '.join(files)}; checkpoints/)")
    return lines


class Progress:
    """The run's live bar: steps done and the share of the current one (its rollouts as episodes
    finish, then its update), with a time remaining from this run's own step times (and its time
    budget). Silent when disabled; :meth:`note` prints above the bar."""

    def __init__(
        self,
        total: int,
        start: int,
        *,
        enabled: bool,
        time_budget_s: float | None = None,
        console: Any = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.total, self.step, self.time_budget_s = total, start, time_budget_s
        self.log = log or print
        self.bar = None
        self.started = time.perf_counter()
        self.step_started = self.started
        self.durations: list[float] = []
        self.rollout_share = 0.7  # of a step's time; measured after the first step
        self.phase = ""
        self.fraction = 0.0  # of the current step
        if not enabled:
            return
        from rich.progress import BarColumn, Progress as Bar, ProgressColumn, TextColumn
        from rich.table import Column
        from rich.text import Text

        outer, bar_width = self, 16

        class Line(ProgressColumn):
            """Everything after the bar as one line, cut to the terminal's width (never wrapped)."""

            def render(self, task: Any) -> Text:
                text = Text(outer.line(task.fields["info"]), no_wrap=True, overflow="ellipsis")
                text.truncate(max(outer.bar.console.width - len("train") - bar_width - 3, 10), overflow="ellipsis")
                return text

        self.bar = Bar(
            TextColumn("[bold]train"),
            BarColumn(bar_width=bar_width),
            Line(table_column=Column(no_wrap=True, overflow="ellipsis")),
            console=console,
        )
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def remaining_s(self) -> float | None:
        """Seconds left: the mean step time of this run times the steps left, less what the current
        step has done; capped by the time budget. None before a step has finished."""
        now = time.perf_counter()
        budget_left = None if self.time_budget_s is None else max(self.time_budget_s - (now - self.started), 0.0)
        if not self.durations:
            return budget_left
        mean = sum(self.durations) / len(self.durations)
        current = max(mean - (now - self.step_started), 0.0) if self.step < self.total else 0.0
        left = current + mean * max(self.total - self.step - 1, 0)
        if budget_left is not None:  # the run stops after the step that passes its budget
            left = min(left, budget_left + current)
        return left

    def line(self, info: str = "") -> str:
        """The text after the bar: the step, its phase, the time left, then the last step's figures."""
        left = self.remaining_s()
        eta = "-:--:--" if left is None else _clock(left)
        steps = f"step {min(self.step + 1, self.total)}/{self.total}"
        width = len(f"step {self.total}/{self.total}")
        return f"{steps:<{width}}  {self.phase:<14} eta {eta}  {info}".rstrip()

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.step + self.fraction)

    def rollouts(self, done: int, planned: int) -> None:
        """``done`` of the step's ``planned`` episodes have finished."""
        if done == 0 and not self.phase:
            self.step_started = time.perf_counter()
        self.phase = f"rollouts {done}/{planned}"
        self.fraction = self.rollout_share * min(done / max(planned, 1), 1.0)
        self._show()

    def updating(self) -> None:
        self.phase = "update"
        self.fraction = self.rollout_share
        self._show()

    def update(self, row: dict[str, Any]) -> None:
        """The step of ``row`` has finished."""
        self.durations.append(row.get("perf/step_s", time.perf_counter() - self.step_started))
        if row.get("perf/step_s"):
            self.rollout_share = min(max(row.get("perf/rollout_s", 0.0) / row["perf/step_s"], 0.05), 0.95)
        self.step, self.phase, self.fraction = row["step"], "", 0.0
        self.step_started = time.perf_counter()
        if self.bar is not None:
            errors = row.get("episodes/errors", 0)
            info = f"reward {row['reward/mean']:.3f}  loss {row['loss/policy']:+.4f}  {row['perf/step_s']:.1f}s/step"
            if errors:
                info += f"  errors {errors}/{row.get('episodes/count', 0)}"
            self.bar.update(self.task, info=info)
            self._show()

    def note(self, line: str) -> None:
        """Print one line (above the bar when there is one)."""
        if self.bar is not None:
            self.bar.console.print(line, highlight=False, markup=False, soft_wrap=True)
        else:
            self.log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
