"""serve-model with the real embedded default model, driven by the official `openai` client; LoRA
adapters by name; adapters that do not fit; local-model evaluation. Slow: loads SmolLM2-135M."""

from __future__ import annotations

import json

import httpx
import pytest

from envhub.errors import AdapterMismatchError
from envhub.evaluation.local_model import LocalModel, Sampling
from envhub.evaluation.model_server.app import create_app
from envhub.evaluation.model_server.scripted import serve_in_thread

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

CHAT = [{"role": "user", "content": "What is 2 + 2? Answer with a number."}]


@pytest.fixture(scope="module")
def local_model():
    return LocalModel(None, device="cpu")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, local_model):
    """A LoRA adapter trained on nothing, but of the right shapes for the default model."""
    from peft import LoraConfig, get_peft_model

    from envhub.models.loading import load_policy

    model, _ = load_policy(None, device="cpu")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    folder = tmp_path_factory.mktemp("adapter") / "mine"
    peft_model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def foreign_lora_dir(tmp_path_factory):
    """A LoRA adapter of a different (tiny) architecture: it cannot fit the default model."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4))  # fmt: skip
    peft_model = get_peft_model(tiny, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    folder = tmp_path_factory.mktemp("foreign") / "tiny"
    peft_model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def server(local_model):
    app = create_app(local_model, served_name="smollm2")
    with serve_in_thread(app) as url:
        yield url


def test_openai_client_lists_models_and_chats(server):
    client = openai.OpenAI(base_url=server, api_key="unused")
    assert [m.id for m in client.models.list().data][0] == "smollm2"
    reply = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=12, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 5
    # streaming gives the same greedy text, in pieces, and ends with a finish reason
    stream = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=12, temperature=0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2


def test_concurrent_requests_and_bad_requests(server):
    import concurrent.futures

    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": f"Say {i}."}], max_tokens=4, temperature=0), range(4)))  # fmt: skip
    assert all(r.choices[0].message.content is not None for r in replies)
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="gpt-nope", messages=CHAT, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=4, temperature=7)
    bad = httpx.post(server + "/chat/completions", content=b"{not json", timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_lora_adapters_load_by_name(server, lora_dir, foreign_lora_dir, tmp_path):
    loaded = httpx.post(server + "/load_lora_adapter", json={"lora_name": "mine", "lora_path": str(lora_dir)}, timeout=120)
    assert loaded.status_code == 200, loaded.text
    client = openai.OpenAI(base_url=server, api_key="unused")
    assert {m.id for m in client.models.list().data} == {"smollm2", "mine"}
    reply = client.chat.completions.create(model="mine", messages=CHAT, max_tokens=6, temperature=0)
    assert reply.model == "mine" and reply.choices[0].message.content is not None
    # an adapter of another architecture is refused with the reason, and nothing changes
    refused = httpx.post(server + "/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(foreign_lora_dir)}, timeout=120)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "adapter_mismatch"
    (tmp_path / "empty").mkdir()
    refused = httpx.post(server + "/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(tmp_path / "empty")}, timeout=30)
    assert "not a peft adapter folder" in refused.json()["error"]["message"]
    assert {m.id for m in client.models.list().data} == {"smollm2", "mine"}
    # the base model is still served without the adapter
    base = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=6, temperature=0)
    assert base.choices[0].message.content is not None


def test_adapter_mismatch_error_names_the_problem(foreign_lora_dir, local_model):
    with pytest.raises(AdapterMismatchError, match="does not fit base model") as info:
        local_model.load_adapter("bad", foreign_lora_dir)
    assert "size mismatch" in str(info.value) or "shape" in str(info.value)
    assert "base_model_name_or_path" in info.value.hint


def test_local_evaluation_with_the_default_model_and_an_adapter(lora_dir, tmp_path, monkeypatch):
    from envhub.evaluation import evaluate

    monkeypatch.setenv("ENVHUB_HOME", str(tmp_path / "home"))
    summary = evaluate("arithmetic", episodes=4, max_tokens=24, out_dir=tmp_path / "base")
    assert summary.episodes == 4 and summary.errors == 0 and summary.model == "default"
    records = [json.loads(line) for line in (tmp_path / "base" / "results.jsonl").read_text().splitlines()]
    assert all(r["usage"]["completion_tokens"] > 0 and r["model"]["kind"] == "local" for r in records)
    tuned = evaluate("arithmetic", adapter=str(lora_dir), episodes=4, max_tokens=24, out_dir=tmp_path / "tuned")
    assert tuned.errors == 0
    assert json.loads((tmp_path / "tuned" / "run.json").read_text())["model"]["adapter"] == str(lora_dir)


def test_a_folded_adapter_answers_as_the_adapter_loaded_by_name(lora_dir, foreign_lora_dir, local_model):
    """An evaluation folds its one adapter into the weights (for speed): the same greedy answers as
    the adapter applied by peft, which differ from the base model's; a folded model takes no more."""
    chats = [CHAT, [{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "What is 7 * 6?"}]]
    greedy = Sampling(0.0, 1.0, 12)
    local_model.load_adapter("fold-check", lora_dir)
    by_name = [g.text for g in local_model.generate(chats, greedy, adapter="fold-check")]
    base = [g.text for g in local_model.generate(chats, greedy)]
    assert by_name != base  # the adapter changes the answers, so the comparison below can fail

    folded = LocalModel(None, device="cpu")
    with pytest.raises(AdapterMismatchError):
        folded.fold_adapter(foreign_lora_dir)  # refused as load_adapter refuses it, nothing folded
    assert folded.folded is None
    assert not any("lora" in name for name, _ in folded.model.named_parameters())  # the base model, untouched
    folded.fold_adapter(lora_dir)
    assert folded.folded == str(lora_dir) and not folded.adapters
    assert not any("lora" in name for name, _ in folded.model.named_parameters())
    assert [g.text for g in folded.generate(chats, greedy)] == by_name
    with pytest.raises(ValueError, match="folded into this model"):
        folded.load_adapter("more", lora_dir)


def test_generate_batches_and_reports_lengths(local_model):
    gens = local_model.generate([CHAT, CHAT[:1] + [], [{"role": "user", "content": "Hi"}]], Sampling(0.0, 1.0, 5))
    assert len(gens) == 3 and all(g.completion_tokens <= 5 for g in gens)
    assert gens[0].text == gens[1].text  # greedy: the same prompt gives the same answer in one batch
