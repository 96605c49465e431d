"""Rollouts through real envhub environments with the real default model.

Multi-turn token bookkeeping (only sampled tokens carry loss, the ids are exactly the sampled
ones), sampler/loss log-prob consistency, and a tiny end-to-end training run with resume.
"""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
envhub = pytest.importorskip("envhub")

from trainers.generation import TransformersBackend  # noqa: E402
from envhub.models.decoding import MIN_SHARED_TOKENS  # noqa: E402
from envhub.models.loading import load_policy, load_tokenizer  # noqa: E402
from envhub.models.precision import autocast  # noqa: E402
from envhub.runtime.env_pool import EnvPool  # noqa: E402
from trainers.config import make_config  # noqa: E402
from trainers.grpo import train  # noqa: E402
from trainers.rollout import bridge_tokens, derive_seed, pack, rollout, sampled_logprobs  # noqa: E402


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return load_policy(device="cpu")


def test_bridge_tokens_extend_the_sampled_ids_like_the_chat_template():
    tokenizer = load_tokenizer()
    history = [
        {"role": "system", "content": "Guess the number."},
        {"role": "user", "content": "From 1 to 30."},
    ]
    prompt = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    reply = "I guess <guess>15</guess>"
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    sampled = tokenizer(reply, add_special_tokens=False)["input_ids"] + [end]  # as if sampled, stop included
    history = history + [{"role": "assistant", "content": reply}]
    new = [{"role": "user", "content": "Higher than 15. 9 turns left."}]
    bridge = bridge_tokens(tokenizer, history, new, "<|im_end|>")
    expected = tokenizer.apply_chat_template(history + new, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert list(prompt) + sampled + bridge == list(expected)
    # a completion cut by the length limit gets the template's end-of-turn from the bridge
    cut = bridge_tokens(tokenizer, history, new, None)
    assert cut[0] == end and cut[1:] == bridge


@pytest.mark.slow
def test_multi_turn_rollout_masks_environment_tokens(policy):
    model, tokenizer = policy
    backend = TransformersBackend(model, tokenizer, temperature=1.0, max_new_tokens=12)
    pool = EnvPool("guess-number", kwargs={"level": "easy"})
    plan = [(0, 0, 7), (0, 0, 7), (1, 0, 8)]
    episodes = rollout(backend, tokenizer, [pool], plan, split="train", max_new_tokens=12, max_episode_tokens=400, seed=1)
    pool.close()
    assert all(ep.error is None for ep in episodes)
    multi = [ep for ep in episodes if ep.turns >= 2]
    assert multi, "an untrained 135M model does not solve guess-number in one turn"
    for ep in episodes:
        assert len(ep.ids) == len(ep.sampled) == len(ep.sampler_logp)
        assert sum(ep.sampled) == ep.completion_tokens
        assert ep.done and (ep.criteria or ep.truncated)
        # sampled tokens have their sampling log-probs, everything else NaN
        assert all(math.isnan(lp) != s for lp, s in zip(ep.sampler_logp, ep.sampled))
        # the episode keeps the whole conversation, its last reply included
        assert sum(m["role"] == "assistant" for m in ep.messages) == ep.turns
    ep = multi[0]
    # split the sequence into runs of sampled / not sampled tokens
    runs, start = [], 0
    for i in range(1, len(ep.ids) + 1):
        if i == len(ep.ids) or ep.sampled[i] != ep.sampled[start]:
            runs.append((ep.sampled[start], ep.ids[start:i]))
            start = i
    sampled_runs = [ids for s, ids in runs if s]
    env_runs = [ids for s, ids in runs if not s]
    assert len(sampled_runs) == ep.turns
    # the masked runs are the prompt and the environment's replies, rendered by the template
    user_replies = [m["content"] for m in ep.messages if m["role"] == "user"][1:]
    for reply, ids in zip(user_replies, env_runs[1:]):
        text = tokenizer.decode(ids)
        assert reply in text and text.rstrip().endswith("<|im_start|>assistant")
    # and the sampled runs decode to exactly the assistant messages the environment received
    assistant = [m["content"] for m in ep.messages if m["role"] == "assistant"]
    for said, ids in zip(assistant, sampled_runs):
        assert tokenizer.decode(ids, skip_special_tokens=True) == said
    # the loss scores exactly the sampled tokens, with the sampler's values, across the turns
    batch = pack(episodes, tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        logp, mask = sampled_logprobs(model, batch, 1.0, 1.0)
    assert (~mask & batch["suffix_mask"].bool()).any()  # environment tokens in the suffix
    assert torch.allclose(logp[mask], batch["sampler_logp"][mask], atol=2e-4) and not logp[~mask].any()


def test_replies_end_at_the_environments_stop_string(policy, monkeypatch):
    """arithmetic's manifest stops replies at ``</answer>``: a sampled reply that writes the tag ends
    with the token that closes it. Without the stop, some of the same rollouts run on past the tag
    (to a made-up next question), which is what the stop is for."""
    model, tokenizer = policy
    backend = TransformersBackend(model, tokenizer, temperature=0.7, max_new_tokens=32)  # the quickstart's
    pool = EnvPool("arithmetic", kwargs={"level": "starter"})
    plan = [(g, 0, 100 + g) for g in range(4) for _ in range(8)]

    def tagged_replies() -> list[list[int]]:
        episodes = rollout(backend, tokenizer, [pool], plan, split="train", max_new_tokens=32, max_episode_tokens=400, seed=4)
        assert all(ep.error is None for ep in episodes)
        return [ep.ids[ep.prompt_tokens :] for ep in episodes if "</answer>" in ep.messages[-1]["content"]]

    stopped = tagged_replies()
    assert stopped, "no sampled reply wrote the answer tag"
    assert all("</answer>" not in tokenizer.decode(r[:-1], skip_special_tokens=True) for r in stopped)
    monkeypatch.setattr("trainers.rollout.reply_stops", lambda env: ())
    loose = tagged_replies()
    pool.close()
    assert any(tokenizer.decode(r, skip_special_tokens=True).split("</answer>", 1)[1].strip() for r in loose)


def sampled_arithmetic_batch(backend, tokenizer):
    """Four arithmetic episodes (a group of three tasks alike and one other) sampled by ``backend``
    at temperature 0.7, top-p 0.9, and packed for the loss forward."""
    pool = EnvPool("arithmetic", kwargs={"level": "easy"})
    episodes = rollout(backend, tokenizer, [pool], [(0, 0, 3)] * 3 + [(1, 0, 4)], split="train", max_new_tokens=16, max_episode_tokens=400, seed=5)
    pool.close()
    return episodes, pack(episodes, tokenizer.pad_token_id, torch.device("cpu"))


@pytest.mark.slow
def test_sampler_and_loss_use_the_same_distribution(policy):
    model, tokenizer = policy
    backend = TransformersBackend(model, tokenizer, temperature=0.7, top_p=0.9, max_new_tokens=16)
    episodes, batch = sampled_arithmetic_batch(backend, tokenizer)
    with torch.no_grad():
        logp, mask = sampled_logprobs(model, batch, 0.7, 0.9)
    assert mask.sum() == sum(ep.completion_tokens for ep in episodes)
    assert torch.allclose(logp[mask], batch["sampler_logp"][mask], atol=2e-4)


@pytest.mark.slow
def test_shared_prompt_forward_matches_full_sequences_values_and_gradients(policy):
    import peft

    base, tokenizer = policy
    backend = TransformersBackend(base, tokenizer, temperature=1.0, max_new_tokens=10)
    pool = EnvPool("arithmetic", kwargs={"level": "easy"})
    episodes = rollout(backend, tokenizer, [pool], [(0, 0, 11)] * 3 + [(1, 0, 12)] * 2, split="train", max_new_tokens=10, max_episode_tokens=400, seed=2)
    pool.close()
    torch.manual_seed(0)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():  # a non-zero adapter, so gradients reach lora_A too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    batch = pack(episodes, tokenizer.pad_token_id, torch.device("cpu"))
    assert batch["prefix_ids"].shape[0] == 2  # two distinct prompts for five episodes
    assert batch["head_ids"].shape[1] >= MIN_SHARED_TOKENS  # and the head they share runs once
    logp, mask = sampled_logprobs(model, batch, 1.0, 1.0)
    (logp * mask).sum().backward()
    shared = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total = 0
    for i, ep in enumerate(episodes):  # one plain forward over each whole sequence
        ids = torch.tensor([ep.ids])
        logits = model(input_ids=ids).logits[0, ep.prompt_tokens - 1 : -1]
        full = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, ep.prompt_tokens :, None]).squeeze(-1)
        n = len(ep.ids) - ep.prompt_tokens
        on = mask[i, :n]  # logp holds the sampled tokens' values, 0 elsewhere
        assert torch.allclose(full[on], logp[i, :n][on].detach(), atol=1e-4) and not logp[i, :n][~on].any()
        total = total + full[torch.tensor(ep.sampled[ep.prompt_tokens :])].sum()
    total.backward()
    assert shared.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in shared.items():
        plain = dict(model.named_parameters())[name].grad
        assert (grad - plain).norm() <= 1e-3 * plain.norm(), name  # float32 summation order only
    model.unload()


@pytest.mark.slow
def test_bf16_mixed_precision_samples_and_scores_in_bfloat16_and_keeps_float32_weights(policy):
    model, tokenizer = policy
    backend = TransformersBackend(model, tokenizer, temperature=0.7, top_p=0.9, max_new_tokens=16, mixed_precision="bf16")
    _episodes, batch = sampled_arithmetic_batch(backend, tokenizer)
    with torch.no_grad():
        full, mask = sampled_logprobs(model, batch, 0.7, 0.9)
        with autocast(torch.device("cpu"), "bf16"):
            mixed, _ = sampled_logprobs(model, batch, 0.7, 0.9)
    sampler = batch["sampler_logp"][mask]
    # the sampler ran in bfloat16: float32 scores its tokens differently (2e-4 apart when both are float32)
    assert (full[mask] - sampler).abs().mean() > 1e-3
    # the loss under the same autocast scores them close to the sampler (bfloat16 rounding, not another policy)
    assert (mixed[mask] - sampler).abs().mean() < 0.05
    assert mixed.dtype == torch.float32  # the log-softmax stays float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights untouched by the casts


@pytest.mark.slow
def test_a_bf16_mixed_precision_run_trains_float32_adapters(tmp_path):
    from safetensors.torch import load_file

    settings = {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 16, "steps": 1, "progress": False,
                "lora_r": 4, "lora_alpha": 8, "dynamic_sampling": False, "minibatches": 2, "mixed_precision": "bf16"}  # fmt: skip
    result = train(make_config("cispo", envs=["arithmetic?level=easy"], overrides={**settings, "output_dir": str(tmp_path)}))
    (row,) = result.metrics
    assert row["episodes/errors"] == 0 and math.isfinite(row["loss/policy"])
    assert row["adv/abs_mean"] > 0, "no group had a reward spread: the settings test no update"
    assert result.provenance["config"]["mixed_precision"] == "bf16"
    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert any(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)  # it updated


def test_autocast_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="mixed_precision must be 'no' or 'bf16'"):
        autocast(torch.device("cpu"), "fp16")


@pytest.mark.slow
def test_tiny_training_run_produces_a_loadable_adapter_and_resumes_exactly(tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    settings = {
        "prompts_per_step": 2,
        "group_size": 2,
        "max_new_tokens": 16,  # at 8, both samples of every group scored alike: no gradient to test
        "steps": 2,
        "checkpoint_every": 1,
        "progress": False,
        "lora_r": 4,
        "lora_alpha": 8,
        "dynamic_sampling": False,
        "minibatches": 2,
    }
    full = train(make_config("cispo", envs=["arithmetic?level=easy"], overrides={**settings, "output_dir": str(tmp_path / "full")}))
    assert [m["step"] for m in full.metrics] == [1, 2]
    row = full.metrics[-1]
    for key in ("reward/mean", "reward/criterion/correct", "loss/policy", "clip/frac", "perf/tokens_per_s", "perf/step_s", "episodes/errors"):
        assert key in row
    assert row["episodes/errors"] == 0
    assert all(m["adv/abs_mean"] > 0 for m in full.metrics), "no group had a reward spread: the settings test no update"

    provenance = json.loads((full.adapter_dir / "provenance.json").read_text())
    (environment,) = provenance["environments"]
    assert environment["ref"] == "envhub/arithmetic@1.3.0" and environment["digest"].startswith("sha256:")
    assert environment["rubric_hash"].startswith("sha256:")
    assert provenance["model"]["source_digest"].startswith("sha256:")
    assert provenance["config"]["algo"] == "cispo" and provenance["config"]["cispo_max_ratio"] == 5.0
    assert "git" in provenance and (full.output_dir / "metrics.jsonl").read_text().count("\n") == 2
    assert provenance["trainer"] == train.__module__ == "trainers.grpo"  # a module that exists

    base, _ = load_policy(device="cpu")
    tuned = PeftModel.from_pretrained(base, str(full.adapter_dir))
    assert any("lora_B" in name and p.abs().sum() > 0 for name, p in tuned.named_parameters())

    # interrupted after step 1, then resumed: the same adapter as the uninterrupted run
    out = tmp_path / "resumed"
    train(make_config("cispo", envs=["arithmetic?level=easy"], overrides={**settings, "steps": 1, "output_dir": str(out)}))
    resumed = train(make_config("cispo", envs=["arithmetic?level=easy"], overrides={**settings, "output_dir": str(out)}))
    assert resumed.provenance["resumed_from_step"] == 1
    assert [m["step"] for m in resumed.metrics] == [1, 2]
    a = load_file(str(full.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.metrics[-1]["reward/mean"] == full.metrics[-1]["reward/mean"]


def test_micro_batches_are_cut_by_padded_tokens_as_well_as_count():
    from trainers.rollout import _chunks

    items = list(range(6))
    assert list(_chunks(items, [10] * 6, 4, None)) == [[0, 1, 2, 3], [4, 5]]
    # 900-token multi-turn episodes at 2048 padded tokens: two at a time, not sixteen
    assert list(_chunks(items, [900] * 6, 16, 2048)) == [[0, 1], [2, 3], [4, 5]]
    # padding counts: a long one widens its chunk; one longer than the budget runs alone
    assert list(_chunks(items, [100, 100, 700, 100, 3000, 100], 16, 1500)) == [[0, 1], [2, 3], [4], [5]]
