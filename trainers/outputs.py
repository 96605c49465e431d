"""A training run's output folder: checkpoints and resume, metrics.jsonl, provenance.json, the adapter.

    output_dir/
      metrics.jsonl                 one JSON row per step (the metric names are namespaced)
      tensorboard/                  the same rows as event files, when asked for
      checkpoints/step-NNNNNN/      peft adapter, optimizer.pt, trainer_state.json, provenance.json
      adapter/                      the final peft adapter, with its provenance.json
      provenance.json               environment identities and digests, rubric hashes, config, model,
                                    code version, library versions, final metrics

Every file is written to a temporary name and renamed, so a crash never leaves half of one; a
resumed run continues from the latest complete checkpoint and keeps only the metric rows it covers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from envhub.identity.artifact import write_atomic
from envhub.runtime.env_pool import EnvPool
from trainers.config import EnvSpec, TrainConfig, config_to_dict

__all__ = ["Progress", "RunOutputs", "environment_identities"]

_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md")


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str).encode(), mode=0o644)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class RunOutputs:
    """The output folder of one run, from resume to the final adapter.

    ``trainer`` is the module that trains (recorded in the provenance); ``model_path`` the base
    model's folder.
    """

    def __init__(self, config: TrainConfig, *, trainer: str, model_path: str) -> None:
        self.config = config
        self.dir = Path(config.output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.metrics: list[dict[str, Any]] = []
        """The rows of every step so far (those a resumed run kept, then this run's)."""
        self.latest: Path | None = None
        """The last checkpoint saved or resumed from: what the final adapter is copied from."""
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

    def resume(self, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        """Load the latest checkpoint into model, optimizer and scheduler (``config.resume``), or
        delete stale ones (a fresh run); truncate metrics.jsonl to the steps kept. Returns the
        number of steps already done."""
        start_step = 0
        checkpoints = self.dir / "checkpoints"
        if not self.config.resume:  # a fresh run: stale checkpoints must not be taken for this run's
            shutil.rmtree(checkpoints, ignore_errors=True)
        done = sorted(p for p in checkpoints.glob("step-*") if (p / "trainer_state.json").is_file()) if self.config.resume else []
        if done:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            self.latest = done[-1]
            set_peft_model_state_dict(model, load_file(str(self.latest / "adapter_model.safetensors")))
            device = next(model.parameters()).device
            state = torch.load(self.latest / "optimizer.pt", map_location=device, weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_step = json.loads((self.latest / "trainer_state.json").read_text())["step"]
        if self.metrics_path.exists():  # keep only the steps the checkpoint covers
            for line in self.metrics_path.read_text().splitlines():
                row = json.loads(line)
                if row["step"] <= start_step:
                    self.metrics.append(row)
        with open(self.metrics_path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in self.metrics)
        self.provenance["resumed_from_step"] = start_step or None
        if self.config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.dir / "tensorboard"))
        return start_step

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


class Progress:
    """A rich progress bar showing the latest reward; silent when disabled."""

    def __init__(self, total: int, start: int, *, enabled: bool) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Bar(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def update(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            info = f"reward {row['reward/mean']:.3f}  loss {row['loss/policy']:+.4f}  {row['perf/step_s']:.1f}s/step"
            self.bar.update(self.task, advance=1, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
