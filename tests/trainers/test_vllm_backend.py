"""The vLLM backend: only where vLLM and a CUDA GPU exist (the skip says which is missing)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from trainers.generation import VLLMBackend, vllm_available  # noqa: E402

available, why = vllm_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not available, reason=f"vLLM backend not testable here: {why}")]


def test_vllm_samples_and_hot_loads_the_adapter(tmp_path):
    import peft

    from envhub.models.loading import default_model_path, load_policy

    model, tokenizer = load_policy(device="cuda")
    policy = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    backend = VLLMBackend(str(default_model_path()), tokenizer, temperature=1.0, max_new_tokens=16, lora_rank=8)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    before = backend.generate([prompt] * 4, seed=0)
    assert len(before) == 4 and all(c.token_ids for c in before)
    backend.update_weights(policy)  # saved and passed as a new LoRARequest
    after = backend.generate([prompt] * 4, seed=0)
    assert len(after) == 4 and backend._lora is not None and backend._lora.lora_int_id == 1
