"""Local-model evaluation moves per episode (issue 14: `eval -n 8` sat at 0/8 for 3 minutes, then
jumped to 8/8): an answer that ends early is handed over while the rest of its batch still
generates. Slow: the real embedded SmolLM2-135M on CPU, greedy, a few tokens."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from envhub.evaluation.local_model import Batcher, LocalModel, Sampling
from envhub.evaluation.policies import LocalPolicy
from envhub.evaluation.runner import EvalConfig, run_eval

pytestmark = pytest.mark.slow

SHORT = "Answer yes or no: is the sky blue?"  # greedy: "No." and the end token
LONG = "Write a long story about a dragon who lives in a castle."  # runs to max_tokens
TOKENS = 12


@pytest.fixture(scope="module")
def local_model():
    return LocalModel(None, device="cpu")


def test_the_batcher_answers_a_short_reply_before_its_batch_ends(local_model):
    async def main():
        batcher = Batcher(local_model)
        sampling = Sampling(0.0, 1.0, TOKENS)
        short = asyncio.ensure_future(batcher.submit([{"role": "user", "content": SHORT}], sampling))
        long = asyncio.ensure_future(batcher.submit([{"role": "user", "content": LONG}], sampling))
        done, _ = await asyncio.wait([short, long], return_when=asyncio.FIRST_COMPLETED)
        long_was_pending = not long.done()
        await asyncio.gather(short, long)
        await batcher.aclose()
        return done, long_was_pending, short.result(), long.result(), batcher.batches

    done, long_was_pending, (short_gen, short_s), (long_gen, long_s), batches = asyncio.run(main())
    assert batches == 1  # one batched generation...
    assert len(done) == 1 and long_was_pending  # ...whose short answer came out while the long one ran on
    assert short_gen.finish_reason == "stop" and short_gen.completion_tokens < TOKENS
    assert long_gen.finish_reason == "length" and long_gen.completion_tokens == TOKENS
    assert short_s < long_s
    # the early answer is the one the whole batch gives it
    assert local_model.generate([[{"role": "user", "content": SHORT}]], Sampling(0.0, 1.0, TOKENS))[0] == short_gen


def _two_prompt_env(folder):
    """An environment whose task 0 asks for a short reply and task 1 for a long one."""
    folder.mkdir()
    (folder / "envhub.toml").write_text(
        'namespace = "tests"\nname = "two-lengths"\nversion = "1.0.0"\ndescription = "A short and a long reply."\n'
        'entrypoint = "two_env:make_env"\nlicense = "Apache-2.0"\nmax_turns = 1\n'
    )
    (folder / "two_env.py").write_text(
        "from envhub import ChatEnv, Rubric, criterion, user\n\n"
        "@criterion\ndef replied(episode):\n    return bool(episode.completion)\n\n"
        "class Two(ChatEnv):\n    max_turns = 1\n    rubric = Rubric([replied], name='two')\n\n"
        "    def tasks(self, split):\n"
        f"        return [{{'id': 'short', 'prompt': {SHORT!r}}}, {{'id': 'long', 'prompt': {LONG!r}}}]\n\n"
        "    def sample_task(self, rng, split):\n"
        "        return self.tasks(split)[self.task_index % 2]\n\n"
        "    def reset(self, *, seed=None, options=None):\n"
        "        self.task_index = seed or 0\n"
        "        return super().reset(seed=seed, options=options)\n\n"
        "    def initial_messages(self, task):\n        return [user(task['prompt'])]\n\n"
        "def make_env(**kwargs):\n    return Two(**kwargs)\n"
    )
    return folder


def test_an_evaluation_writes_each_episode_as_it_ends(local_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ENVHUB_HOME", str(tmp_path / "home"))
    env = _two_prompt_env(tmp_path / "two")
    seen: list[tuple[str, float, int]] = []
    out = tmp_path / "run"

    def progress(record):  # what the bar calls: record it with the lines results.jsonl has by then
        lines = (out / "results.jsonl").read_text().count("\n")
        seen.append((record["task_id"], time.perf_counter(), lines))

    policy = LocalPolicy(local_model=local_model, sampling=Sampling(0.0, 1.0, TOKENS))
    config = EvalConfig(env=str(env), out_dir=str(out), episodes=2, concurrency=2, temperature=0.0,
                        max_tokens=TOKENS, split="train", report=False)  # fmt: skip
    summary = run_eval(config, policy=policy, progress=progress)
    assert summary.errors == 0 and summary.episodes == 2
    assert [s[0] for s in seen] == ["short", "long"]  # the bar moved once per episode, short one first
    assert [s[2] for s in seen] == [1, 2]  # and each episode was on disk when it moved
    records = {r["task_id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    # both were in one batch; the short one's model time ended well before the long one's
    assert records["short"]["timings"]["model_s"] < 0.75 * records["long"]["timings"]["model_s"]
    assert records["long"]["usage"]["completion_tokens"] == TOKENS
