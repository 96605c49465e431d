"""envhub's reference trainer: GRPO with the DAPO and CISPO objectives, LoRA adapters via peft.

The algorithm reads top to bottom in :mod:`trainers.grpo`; beside it, :mod:`trainers.config` (every
knob), :mod:`trainers.rollout` (episodes and their log-probs), :mod:`trainers.generation`
(sampling backends), :mod:`trainers.outputs` (checkpoints, metrics, provenance) and
:mod:`trainers.cli` (``envhub train``); model loading is :mod:`envhub.models.loading`. Importing
this package is cheap: torch and transformers load only when a model or the trainer is used.
"""

from __future__ import annotations

from envhub._lazy import lazy_getattr

__all__ = [
    "DEMO_SETTINGS",
    "EnvSpec",
    "Rollout",
    "TrainConfig",
    "TrainResult",
    "default_model_path",
    "demo",
    "heldout_rollouts",
    "load_policy",
    "make_config",
    "train",
]

_LAZY = {
    "DEMO_SETTINGS": "trainers.config",
    "EnvSpec": "trainers.config",
    "TrainConfig": "trainers.config",
    "make_config": "trainers.config",
    "Rollout": "trainers.rollout",
    "heldout_rollouts": "trainers.rollout",
    "TrainResult": "trainers.grpo",
    "demo": "trainers.grpo",
    "train": "trainers.grpo",
    "default_model_path": "envhub.models.loading",
    "load_policy": "envhub.models.loading",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
