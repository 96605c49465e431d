"""envhub's decoding loop on the real default model: a shared prompt head changes no answer."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from envhub.models.decoding import MIN_SHARED_TOKENS, StopStrings, common_prefix_length, decode, token_logprobs  # noqa: E402
from envhub.models.loading import load_policy, stop_token_ids  # noqa: E402


def test_common_prefix_leaves_each_prompt_a_token_of_its_own():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter keeps its last token
    assert common_prefix_length([[1, 2], [3, 2]]) == 0
    assert common_prefix_length([[1, 2, 3]]) == 0  # one prompt: nothing to share


@pytest.fixture(scope="module")
def policy():
    model, tokenizer = load_policy(device="cpu")
    return model.eval(), tokenizer


def _prompts(tokenizer, questions):
    head = "Answer with one number. Show no working. Put the number inside answer tags, like <answer>3</answer>."
    return [
        list(tokenizer.apply_chat_template([{"role": "user", "content": f"{head}\n\n{q}"}], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        for q in questions
    ]


@pytest.mark.slow
def test_a_shared_head_decodes_as_each_prompt_alone(policy):
    model, tokenizer = policy
    prompts = _prompts(tokenizer, ["What is 2 + 2?", "What is 17 - 9?", "What is 6 times 7, and why?"])
    prompts.append(prompts[0])  # a repeated prompt shares its whole row
    assert common_prefix_length(prompts) >= MIN_SHARED_TOKENS  # the shared path is the one tested
    kwargs = {"limit": 24, "stop_ids": stop_token_ids(model, tokenizer), "pad_id": tokenizer.pad_token_id, "temperature": 0.0}
    ended: list[int] = []
    together = decode(model, prompts, on_done=lambda i, d: ended.append(i), **kwargs)
    alone = [decode(model, [p], **kwargs)[0] for p in prompts]
    assert [d.token_ids for d in together] == [d.token_ids for d in alone]
    assert together[0].token_ids == together[3].token_ids
    assert sorted(ended) == [0, 1, 2, 3]  # every prompt handed over exactly once
    assert any(d.finished for d in together)  # a stop token ended some answers before the limit


@pytest.mark.slow
def test_sampled_logprobs_are_the_full_sequence_values(policy):
    model, tokenizer = policy
    prompts = _prompts(tokenizer, ["What is 3 + 4?", "What is 12 - 5?"])
    generator = torch.Generator().manual_seed(3)
    decoded = decode(
        model, prompts, limit=12, stop_ids=stop_token_ids(model, tokenizer), pad_id=tokenizer.pad_token_id,
        temperature=0.8, top_p=0.9, generator=generator,
    )  # fmt: skip
    for prompt, d in zip(prompts, decoded):
        ids = torch.tensor([prompt + d.token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        full = token_logprobs(logits, ids[0, len(prompt) :], 0.8, 0.9)
        assert torch.allclose(full, torch.tensor(d.logprobs), atol=2e-4)


@pytest.mark.slow
def test_a_stop_string_ends_its_row_at_the_token_that_completes_it(policy):
    model, tokenizer = policy
    prompts = _prompts(tokenizer, ["What is 6 times 7, and why?", "What is 17 - 9?"])
    kwargs = {"limit": 24, "stop_ids": stop_token_ids(model, tokenizer), "pad_id": tokenizer.pad_token_id, "temperature": 0.0}
    free = decode(model, prompts, **kwargs)
    ids = free[0].token_ids
    text = lambda n: tokenizer.decode(ids[:n], skip_special_tokens=True)  # noqa: E731
    # A stop string that spans two tokens (the last character of one and all of the next) and ends
    # halfway through the free answer, where it first appears.
    k = len(ids) // 2
    assert k >= 3 and text(k).startswith(text(k - 1)) and len(text(k)) > len(text(k - 1))
    stop = text(k)[len(text(k - 1)) - 1 :]
    assert tokenizer.decode(ids, skip_special_tokens=True).find(stop) == len(text(k - 1)) - 1
    stopped = decode(model, prompts, stop_strings=StopStrings(tokenizer, [[stop], []]), **kwargs)
    assert stopped[0].token_ids == ids[:k] and stopped[0].finished
    assert stopped[1].token_ids == free[1].token_ids  # a row without stop strings runs as before
    assert not StopStrings(tokenizer, [[], []])  # no strings at all: decode skips the checks
