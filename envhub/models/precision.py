"""Mixed precision for the trainer's forwards: matmuls in bfloat16 under ``torch.autocast``, while
the weights, the LoRA adapters, the optimizer and every log-softmax stay float32.

The sampler and the loss forward run under the same context, so the log-probabilities the
importance ratio compares are computed at one precision."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Literal

MixedPrecision = Literal["no", "bf16"]


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (avx512_bf16 or AMX) that oneDNN uses; without
    them bfloat16 matmuls are emulated and slower than float32."""
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def autocast(device: Any, mode: MixedPrecision) -> ContextManager[Any]:
    """The context the trainer's forwards run in: ``no`` is float32 as loaded, ``bf16`` autocasts
    matmuls to bfloat16 on ``device`` (a torch.device or its type)."""
    if mode == "no":
        return contextlib.nullcontext()
    if mode != "bf16":
        raise ValueError(f"mixed_precision must be 'no' or 'bf16', not {mode!r}")
    import torch

    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
