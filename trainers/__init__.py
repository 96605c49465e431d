"""envhub's reference trainer: GRPO with the DAPO and CISPO objectives, LoRA adapters via peft.

The algorithm reads top to bottom in :mod:`trainers.grpo`; generation backends live in
:mod:`trainers.generation`, model loading in :mod:`envhub.models.loading`. Importing this package is
cheap: torch and transformers load only when a model or the trainer is used.
"""

from __future__ import annotations

from envhub._lazy import lazy_getattr

__all__ = ["TrainConfig", "TrainResult", "cli_main", "default_model_path", "demo", "evaluate", "load_policy", "make_config", "train"]

_LAZY = {
    "TrainConfig": "trainers.grpo",
    "TrainResult": "trainers.grpo",
    "train": "trainers.grpo",
    "cli_main": "trainers.grpo",
    "demo": "trainers.grpo",
    "evaluate": "trainers.grpo",
    "make_config": "trainers.grpo",
    "default_model_path": "envhub.models.loading",
    "load_policy": "envhub.models.loading",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
