"""envhub environments in TRL's GRPOTrainer (the real trl package): the pieces, then one real step each.

The slow tests run one GRPOTrainer step with the embedded SmolLM2-135M-Instruct on guess-number
(rollout_func) and calculator-tools (environment_factory), and check that every reward TRL logged
is what the envhub rubric gives the same episode replayed in a fresh environment.
"""

from __future__ import annotations

import inspect
import json
import os

import pytest

import envhub
from envhub.errors import InvalidOptionError
from envhub.integrations.trl import TASK_KEY, TRLEnvironment, _between_turns, tool_call_text, with_tool_template

# A tool for an environment that declares none: guess-number, whose guesses are <guess>N</guess>.
GUESS = {
    "type": "function",
    "function": {
        "name": "guess",
        "description": "Guess the number; returns whether it is higher, lower or correct.",
        "parameters": {
            "type": "object",
            "properties": {"number": {"type": "integer", "description": "The guess."}},
            "required": ["number"],
        },
    },
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TRL_EXPERIMENTAL_SILENCE"):
        monkeypatch.setenv(var, "1")


def replay(name: str, kwargs: dict, task: dict, actions: list[str]) -> tuple[float, dict | None, bool]:
    """Reward (per-step rewards summed), rubric and whether it ended, for ``actions`` in a fresh env."""
    env = envhub.make(name, **kwargs)
    env.reset(seed=task["seed"], options={"task_id": task["task_id"], "split": task["split"]})
    total, rubric, ended = 0.0, None, False
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        total += reward
        if terminated or truncated:
            return total, info["rubric"], True
    return total, rubric, ended


# --- the pieces, without a model -----------------------------------------------------------------

def test_environment_factory_is_what_trl_introspects():
    from transformers.utils import get_json_schema

    spec = TRLEnvironment("calculator-tools")  # the tools calculator-tools declares
    declared = envhub.make("calculator-tools").tools[0]
    instance = spec.environment_factory()
    # TRL's rule: every public function of the class is a tool, reset is required, get_reward optional.
    public = [n for n, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction) if not n.startswith("_")]
    assert sorted(public) == ["calculator", "reset"]
    schema = get_json_schema(instance.calculator)["function"]
    assert {k: schema[k] for k in ("name", "description", "parameters")} == declared
    with pytest.raises(TypeError):
        instance.calculator(formula="1+1")  # a wrong argument fails like any Python call (TRL reports it)


def test_tool_calls_and_final_message_score_as_the_same_episode_in_process():
    spec = TRLEnvironment("calculator-tools")
    rows = spec.dataset(n=2).to_list()
    instances = [spec.environment_factory() for _ in rows]
    answers = []
    for instance, row in zip(instances, rows):
        assert instance.reset(**row) is None  # the prompt already holds the first messages
        task = envhub.make("calculator-tools").get_task(row["task_id"], "train")
        assert instance.calculator(expression=task["expression"]) == str(task["answer"])
        answers.append(f"<answer>{task['answer']}</answer>")
    completions = [
        [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "calculator"}}]},
         {"role": "tool", "name": "calculator", "content": "..."},
         {"role": "assistant", "content": answers[0]}],
        [{"role": "assistant", "content": "no idea"}],  # the second rollout's last message is no answer
    ]
    logged: dict = {}
    rewards = spec.rubric(completions, environments=instances, log_metric=logged.__setitem__,
                          log_extra=lambda column, values: logged.__setitem__(column, values))
    for i, row in enumerate(rows):
        task = envhub.make("calculator-tools").get_task(row["task_id"], "train")
        actions = [tool_call_text("calculator", {"expression": task["expression"]}), answers[0] if i == 0 else "no idea"]
        total, rubric, ended = replay("calculator-tools", {}, row, actions)
        assert rewards[i] == pytest.approx(total)
        assert logged["envhub/ended"][i] is ended
        if ended:
            assert logged["rubric/correct"][i] == rubric["criteria"]["correct"]["score"]
    assert rewards[0] == pytest.approx(1.0)  # correct, one valid call, within three turns
    assert logged["envhub/ended"] == [True, False] and rewards[1] == 0.0  # the env asked for more: no rubric score
    assert logged["envhub/task_id"] == [r["task_id"] for r in rows]


def test_tools_named_for_an_environment_that_declares_none():
    spec = TRLEnvironment("guess-number", level="easy", tools=[GUESS],
                          render_call=lambda name, arguments: f"<guess>{arguments['number']}</guess>")
    row = spec.dataset(n=1)[0]
    instance = spec.environment_factory()
    instance.reset(**row)
    secret = envhub.make("guess-number", level="easy").get_task(row["task_id"], "train")["secret"]
    low = 1 if secret > 1 else 2
    assert instance.guess(number=low).startswith("Higher" if secret > 1 else "Lower")
    assert instance.guess(number=secret).startswith("Correct!")
    reward = spec.rubric([[{"role": "tool", "content": "Correct!"}]], environments=[instance])  # no last message to send
    assert reward == [pytest.approx(replay("guess-number", {"level": "easy"}, row, [f"<guess>{low}</guess>", f"<guess>{secret}</guess>"])[0])]
    assert reward[0] > 0.6  # solved


def test_a_failing_environment_ends_its_episode_not_the_run():
    from pathlib import Path

    from envhub.errors import EnvironmentFailure, EpisodeEndedError

    faulty = Path(__file__).resolve().parents[1] / "fixtures" / "faulty"
    act = {"name": "act", "description": "Do it.", "parameters": {"properties": {"text": {"type": "string", "description": "what"}}}}
    spec = TRLEnvironment(faulty, tools=[act], render_call=lambda name, arguments: arguments["text"])
    broken, failing, fine = (spec.environment_factory() for _ in range(3))
    broken.reset(task_id="raise", split="train", seed=0)  # the environment raises: recorded, not raised
    with pytest.raises(EpisodeEndedError):
        broken.act(text="hello")
    failing.reset(task_id="t0", split="train", seed=0)
    with pytest.raises(EnvironmentFailure):  # TRL shows the model this tool error
        failing.act(text="raise")
    fine.reset(task_id="t1", split="train", seed=0)
    assert fine.act(text="hello") == "echo: hello"
    logged: dict = {}
    rewards = spec.rubric([[{"role": "assistant", "content": "done"}]] * 3, environments=[broken, failing, fine],
                          log_extra=lambda column, values: logged.__setitem__(column, values))
    assert rewards == [None, None, 1.0]  # TRL leaves the two failed episodes out of the advantages
    assert "initial messages asked to fail" in logged["envhub/error"][0] and "asked to raise" in logged["envhub/error"][1]


def test_dataset_rows_carry_their_task_and_stale_prompts_are_refused():
    spec = TRLEnvironment("guess-number", level="easy")
    row = spec.dataset(split="test", n=1)[0]
    assert json.loads(row["prompt"][0][TASK_KEY]) == {"task_id": row["task_id"], "split": "test", "seed": row["seed"]}
    other = TRLEnvironment("guess-number", level="easy", max_turns=3, tools=[GUESS]).environment_factory()
    with pytest.raises(InvalidOptionError, match="not what the environment starts it with"):
        other.reset(**row)
    with pytest.raises(InvalidOptionError, match="no envhub_task"):
        spec._task_of_prompt([{"role": "user", "content": "hi"}])


def test_misuse_is_named():
    with pytest.raises(InvalidOptionError, match="declares none"):
        TRLEnvironment("guess-number").environment_factory
    with pytest.raises(InvalidOptionError, match="Python identifier"):
        TRLEnvironment("calculator-tools", tools=[{"name": "reset"}])
    with pytest.raises(InvalidOptionError, match="environment_factory or rollout_func"):
        TRLEnvironment("arithmetic").rubric([[{"role": "assistant", "content": "4"}]])


def test_turns_join_without_retokenising_the_sampled_text():
    from envhub.models.loading import default_model_path, load_tokenizer

    tokenizer = load_tokenizer(str(default_model_path()))
    env = envhub.make("guess-number", level="easy")
    messages, _ = env.reset(seed=0)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    text = "<guess>15</guess>"
    sampled = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    after, *_ = env.step(text)
    history = [dict(m) for m in messages] + [{"role": "assistant", "content": text}]
    bridge = _between_turns(tokenizer, history, [dict(m) for m in after[len(history):]], tokenizer.eos_token, {})
    expected = tokenizer.apply_chat_template([dict(m) for m in after], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert list(ids) + sampled + bridge == list(expected)


# --- one GRPOTrainer step with the embedded model ------------------------------------------------

def _trainer(tmp_path, spec: TRLEnvironment, *, max_completion_length: int, **how):
    import torch
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from envhub.models.loading import default_model_path, load_tokenizer

    torch.manual_seed(0)
    args = GRPOConfig(
        # 2 prompts x 2 generations, trained in two micro-batches of 2 (half the peak memory of one of 4);
        # no gradient checkpointing (its recompute costs time, and 2 sequences fit).
        output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        num_generations=2, gradient_checkpointing=False,
        max_completion_length=max_completion_length, temperature=1.0, learning_rate=1e-5, beta=0.0,
        logging_steps=1, log_completions=True, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
        seed=0, dataloader_num_workers=0,
    )
    tokenizer = load_tokenizer(str(default_model_path()))
    if "environment_factory" in how:
        tokenizer = with_tool_template(tokenizer)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return GRPOTrainer(model=str(default_model_path()), processing_class=tokenizer, args=args,
                       train_dataset=spec.dataset(n=2), reward_funcs=spec.reward_funcs, peft_config=lora, **how)


def _logged(tmp_path, trainer):
    import pandas as pd

    table = pd.read_parquet(tmp_path / "trl" / "completions" / "completions_00001.parquet")
    assert len(table) == 4  # 2 prompts x 2 generations
    mean = next(row["rewards/rubric/mean"] for row in trainer.state.log_history if "rewards/rubric/mean" in row)
    assert mean == pytest.approx(table["rubric"].mean(), abs=1e-6)
    return table


def _task(row) -> dict:
    return json.loads(row["prompt"][0][TASK_KEY])


@pytest.mark.slow
def test_one_grpo_step_on_guess_number_with_the_rollout_function(tmp_path):
    spec = TRLEnvironment("guess-number", level="easy", max_turns=2, max_turn_tokens=12)
    trainer = _trainer(tmp_path, spec, max_completion_length=80, rollout_func=spec.rollout_func)
    trainer.train()
    table = _logged(tmp_path, trainer)
    ended = 0
    for _, row in table.iterrows():
        conversation = json.loads(row["envhub/conversation"])
        actions = [m["content"] for m in conversation if m["role"] == "assistant"]
        assert actions and all(a.strip() in row["completion"][0]["content"] for a in actions)  # the tokens TRL trained on
        total, rubric, was_ended = replay("guess-number", {"level": "easy", "max_turns": 2}, _task(row), actions)
        assert row["rubric"] == pytest.approx(total) and row["envhub/ended"] == was_ended
        if was_ended:
            ended += 1
            for name, c in rubric["criteria"].items():
                assert row[f"rubric/{name}"] == pytest.approx(c["score"])
        assert row["envhub/task_id"] == _task(row)["task_id"]
    assert ended == 4  # room for both turns (12 tokens each) and the answer between: the rubric scored every one


@pytest.mark.slow
def test_one_grpo_step_on_calculator_tools_with_the_environment_factory(tmp_path):
    # One turn: the first tool call or the first message ends (and scores) every episode.
    spec = TRLEnvironment("calculator-tools", max_turns=1)
    trainer = _trainer(tmp_path, spec, max_completion_length=32, environment_factory=spec.environment_factory)
    trainer.train()
    table = _logged(tmp_path, trainer)
    for _, row in table.iterrows():
        actions = []
        for message in row["completion"]:  # TRL's own record of the rollout
            if message["role"] != "assistant":
                continue
            calls = message.get("tool_calls")
            if calls is not None and len(calls):
                actions += [tool_call_text(c["function"]["name"], c["function"]["arguments"]) for c in calls]
            else:
                actions.append(message["content"] or "")
        total, rubric, ended = replay("calculator-tools", {"max_turns": 1}, _task(row), actions)
        assert ended and row["envhub/ended"]
        assert row["rubric"] == pytest.approx(total) == pytest.approx(rubric["total"])
        for name, c in rubric["criteria"].items():
            assert row[f"rubric/{name}"] == pytest.approx(c["score"])
