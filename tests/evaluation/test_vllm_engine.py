"""`--engine vllm` for `envhub serve-model` and `envhub eval`: a real vLLM server (CPU here), asked
with the official `openai` client; LoRA adapters served by name from one base model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
openai = pytest.importorskip("openai")

from envhub.models.loading import load_policy  # noqa: E402
from envhub.models.vllm_server import vllm_status  # noqa: E402

installed, why = vllm_status()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not installed and not os.environ.get("CI"), reason=why),
]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two peft adapters of the default model: ``same`` (B = 0, peft's init: the base model's
    output) and ``noisy`` (B random: another model)."""
    root = tmp_path_factory.mktemp("adapters")
    folders = {}
    for name, scale in (("same", 0.0), ("noisy", 0.2)):
        model, _ = load_policy(device="cpu")
        policy = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
        torch.manual_seed(7)
        with torch.no_grad():
            for key, param in policy.named_parameters():
                if "lora_B" in key and scale:
                    param.normal_(0, scale)
        policy.save_pretrained(str(root / name))
        folders[name] = str(root / name)
    return folders


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _envhub(*args: str) -> list[str]:
    return [sys.executable, "-m", "envhub", *args]


def test_serve_model_with_vllm_serves_adapters_by_name_to_the_openai_client(adapters):
    port = _port()
    proc = subprocess.Popen(
        _envhub("serve-model", "--engine", "vllm", "--port", str(port),
                "--adapter", f"same={adapters['same']}", "--adapter", f"noisy={adapters['noisy']}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                served = sorted(m.id for m in client.models.list())
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "vLLM did not come up in 10 minutes"
                time.sleep(1)
        assert served == ["default", "noisy", "same"]

        def greedy(model: str) -> str:
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "What is 12 + 7? Answer briefly."}],
                temperature=0, max_tokens=16,
            )  # fmt: skip
            assert answer.model == model and answer.usage.completion_tokens > 0
            return answer.choices[0].message.content

        base = greedy("default")
        assert base and greedy("same") == base  # an adapter whose B is zero is the base model
        assert greedy("noisy") != base  # the named adapter is the one applied
        with pytest.raises(openai.NotFoundError):
            greedy("nobody")
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    with socket.socket() as s:  # the vLLM server went with it
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_eval_with_vllm_runs_the_adapter_and_records_the_engine(adapters, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        _envhub("eval", "arithmetic", "--engine", "vllm", "--adapter", adapters["noisy"], "--env-arg", "level=easy",
                "-n", "4", "--temperature", "0", "--max-tokens", "32", "-o", str(out), "--no-report"),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 and not any(r.get("error") for r in records)
    assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"] for r in records)
    model = json.loads((out / "run.json").read_text())["model"]
    assert (model["engine"], model["name"], model["adapter"]) == ("vllm", "default", adapters["noisy"])


def test_an_endpoint_with_an_engine_is_refused():
    from envhub.evaluation.policies import make_policy

    with pytest.raises(ValueError, match="--engine is for a local model"):
        make_policy(base_url="http://127.0.0.1:9/v1", model="m", engine="vllm")
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        make_policy(engine="tgi")
