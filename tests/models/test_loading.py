"""The embedded default model: converted once from its GGUF, then loads, generates and trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from envhub.models import loading as models  # noqa: E402


def test_models_dir_follows_envhub_home(tmp_path, monkeypatch):
    monkeypatch.delenv(models.MODELS_ENV, raising=False)  # the test session's shared folder (conftest.py)
    monkeypatch.setenv("ENVHUB_HOME", str(tmp_path))
    assert models.models_dir() == tmp_path / "models"
    assert models.default_model_path(convert=False) == tmp_path / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.delenv("ENVHUB_HOME")
    assert models.models_dir() == Path.home() / ".cache" / "envhub" / "models"


def test_envhub_models_shares_one_folder_between_homes(tmp_path, monkeypatch):
    monkeypatch.setenv(models.MODELS_ENV, str(tmp_path / "shared"))
    for home in ("a", "b"):
        monkeypatch.setenv("ENVHUB_HOME", str(tmp_path / home))
        assert models.default_model_path(convert=False) == tmp_path / "shared" / "SmolLM2-135M-Instruct"


def test_default_gguf_is_found():
    path = models.default_gguf_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 10_000_000


@pytest.mark.slow
def test_default_model_converts_loads_and_generates():
    path = models.default_model_path()
    assert (path / "config.json").is_file()
    assert list(path.glob("*.safetensors"))
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config  # or transformers refuses to train it
    assert json.loads((path / "envhub-conversion.json").read_text())["source_digest"].startswith("sha256:")
    assert models.default_model_path() == path  # cached: second call is a no-op

    model, tokenizer = models.load_policy(device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    assert getattr(model, "hf_quantizer", None) is None
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3? Answer with the number."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "5" in text

    # trainable: a backward pass produces gradients (a GGUF-flagged model would refuse to train)
    model.train()
    loss = model(input_ids=out, labels=out).loss
    loss.backward()
    assert model.get_input_embeddings().weight.grad is not None


def test_loading_prints_no_progress_bar_of_its_own(capfd):
    import subprocess
    import sys

    # A fresh process: in this one, another test may already have turned transformers' bars off.
    # With an adapter wrapped as the trainer and evaluation do, peft's FutureWarning stays out too.
    script = ("import peft; from envhub.models.loading import load_policy; model, _ = load_policy(device='cpu'); "
              "peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=['q_proj'])); print('loaded')")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "loaded"
    assert "Loading weights" not in out.stderr and "it/s]" not in out.stderr, out.stderr[-500:]
    assert "Warning" not in out.stderr, out.stderr[-500:]
