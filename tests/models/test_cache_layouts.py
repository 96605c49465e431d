"""Models whose cache is not one full-attention layer per layer, on small random weights of the real
architectures (transformers builds them from a config; no download).

A sliding window counts cache slots: padding between a shared head and a shorter prompt's tail
would narrow it, so those models must prefill each prompt whole. Layers with a recurrent state
cannot have cache rows copied or dropped, so decoding and training refuse them, and evaluation
falls back to ``model.generate``."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from envhub.errors import UnsupportedModelError  # noqa: E402
from envhub.models.decoding import decode, layout_support, require_row_selection  # noqa: E402

VOCAB = 300
SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}


def tiny(kind: str, vocab: int = VOCAB):
    """A random model of ``kind`` whose logits are sharp enough that greedy choices have no near-ties."""
    if kind == "llama":
        config = transformers.LlamaConfig(vocab_size=vocab, num_hidden_layers=2, **SIZES)
    elif kind == "mistral":  # every layer windowed, 8 slots
        config = transformers.MistralConfig(vocab_size=vocab, num_hidden_layers=2, sliding_window=8, **SIZES)
    elif kind == "gemma3":  # windowed and full layers in turn
        layers = ["sliding_attention", "full_attention"] * 2
        config = transformers.Gemma3TextConfig(vocab_size=vocab, num_hidden_layers=4, head_dim=16, sliding_window=8, layer_types=layers, **SIZES)
    elif kind == "lfm2":  # short convolutions (a recurrent state) and attention
        config = transformers.Lfm2Config(vocab_size=vocab, num_hidden_layers=2, layer_types=["conv", "full_attention"], **SIZES)
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)
    return model


def prompts_with_a_shared_head() -> list[list[int]]:
    """A 20-token head, then tails of 3, 7 and 12: every prompt is longer than the window."""
    g = torch.Generator().manual_seed(1)
    head = torch.randint(3, VOCAB, (20,), generator=g).tolist()
    return [head + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (3, 7, 12)]


def generated_alone(model, prompt: list[int], n: int, stop: int | None = None) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=stop)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize(("kind", "shares"), [("llama", True), ("mistral", False), ("gemma3", False)])
def test_windowed_models_prefill_whole_prompts_and_decode_as_generate(kind, shares):
    model = tiny(kind)
    assert layout_support(model).share_head is shares
    prompts = prompts_with_a_shared_head()
    prompts.append(prompts[0])  # a repeated prompt: its cache row is copied
    stop = generated_alone(model, prompts[1], 16)[4]  # ends the second answer early: its row is dropped
    together = decode(model, prompts, limit=16, stop_ids=[stop], pad_id=0, temperature=0.0)
    assert [d.token_ids for d in together] == [generated_alone(model, p, 16, stop) for p in prompts]
    assert together[1].finished and len(together[1].token_ids) <= 5


def _episode(prompt: list[int], completion: list[int], group: int):
    from trainers.rollout import Rollout

    n = len(prompt)
    return Rollout(
        group=group, env_index=0, task_seed=group, ids=prompt + completion,
        sampled=[False] * n + [True] * len(completion), sampler_logp=[float("nan")] * n + [0.0] * len(completion),
        prompt_tokens=n,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["mistral", "gemma3"])
def test_the_loss_forward_of_a_windowed_model_matches_full_sequences(kind):
    from trainers.rollout import pack, sampled_logprobs

    model = tiny(kind)
    prompts = prompts_with_a_shared_head()
    g = torch.Generator().manual_seed(2)
    episodes = [_episode(p, torch.randint(3, VOCAB, (n,), generator=g).tolist(), i) for i, (p, n) in enumerate(zip(prompts, (9, 4, 6)))]
    batch = pack(episodes, 0, torch.device("cpu"), share_head=layout_support(model).share_head)
    assert batch["head_ids"].shape[1] == 0
    with torch.no_grad():
        logp, sampled = sampled_logprobs(model, batch, 1.0, 1.0)
        for row, ep in enumerate(episodes):
            ids = torch.tensor([ep.ids])
            full = torch.log_softmax(model(input_ids=ids).logits[0, ep.prompt_tokens - 1 : -1], -1)
            expected = full.gather(-1, ids[0, ep.prompt_tokens :, None]).squeeze(-1)
            assert torch.allclose(logp[row][sampled[row]], expected, atol=1e-4)


def test_recurrent_models_are_refused_by_decoding_and_training():
    model = tiny("lfm2")
    support = layout_support(model)
    assert not support.select_rows and "LinearAttentionLayer" in support.layer_kinds
    with pytest.raises(UnsupportedModelError, match="recurrent state") as raised:
        decode(model, prompts_with_a_shared_head(), limit=4, stop_ids=[1], pad_id=0)
    assert raised.value.model == "Lfm2ForCausalLM" and "envhub eval" in raised.value.hint
    with pytest.raises(UnsupportedModelError):
        require_row_selection(model)  # what the trainer calls before any work


@pytest.mark.slow
def test_evaluation_of_a_recurrent_model_falls_back_to_generate(tmp_path):
    """A folder with a random LFM2 and the default model's tokenizer, evaluated as a user's model."""
    from envhub.evaluation.local_model import LocalModel, Sampling
    from envhub.models.loading import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(None))
    model = tiny("lfm2", vocab=len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp_path / "lfm2")
    tokenizer.save_pretrained(tmp_path / "lfm2")
    local = LocalModel(str(tmp_path / "lfm2"), device="cpu")
    conversations = [[{"role": "user", "content": q}] for q in ("What is 2 + 2?", "Name a colour, and say why you like it.")]
    ended: list[int] = []
    got = local.generate(conversations, Sampling(temperature=0.0, max_tokens=6), on_done=lambda i, g: ended.append(i))
    for conversation, generation in zip(conversations, got):
        prompt = local.encode(conversation)
        alone = local.model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=local._stop_ids())
        assert generation.text == tokenizer.decode(alone[0, len(prompt) :], skip_special_tokens=True)
        assert generation.completion_tokens > 0
    assert sorted(ended) == [0, 1]
