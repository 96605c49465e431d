"""envhub environments for TRL's ``GRPOTrainer`` (TRL 1.16): a dataset, the environment, the reward.

:class:`TRLEnvironment` holds one environment (any id, folder and runtime ``envhub.make`` takes)
and hands ``GRPOTrainer`` what it asks for::

    from trl import GRPOConfig, GRPOTrainer
    from envhub.integrations.trl import TRLEnvironment

    # a chat environment, whose environment answers with user messages: a rollout function
    env = TRLEnvironment("guess-number", level="easy")
    trainer = GRPOTrainer(model=..., args=GRPOConfig(...), train_dataset=env.dataset(n=64),
                          rollout_func=env.rollout_func, reward_funcs=env.reward_funcs)

    # a tool environment (it declares its tools): an environment factory
    env = TRLEnvironment("calculator-tools")
    trainer = GRPOTrainer(model=..., processing_class=tokenizer, train_dataset=env.dataset(n=64),
                          environment_factory=env.environment_factory, reward_funcs=env.reward_funcs)

Rewards are the environment's own: its per-step rewards plus, when the episode ends, the rubric's
total, exactly what ``env.step`` returns for the same actions. The reward function is named
``rubric`` (TRL logs ``rewards/rubric/mean``); every criterion's mean is logged as
``rubric/<criterion>``, and each completion's scores, task id and conversation are columns of
TRL's completion log (``log_completions=True``). An episode TRL stops before the environment
ends it (out of completion tokens, or a final message the environment answers) has no rubric
score: its reward is its per-step rewards (0.0 for most environments), and ``envhub/ended`` says so.

Two ways to play, because TRL offers two:

- ``rollout_func``: the model writes every assistant turn, the environment answers with its own
  messages (user or tool), turn after turn, in envhub's own text protocol. Works for any
  environment; generation uses transformers (not vLLM). The environment's messages are masked
  from the loss (``env_mask``).
- ``environment_factory``: TRL parses the model's native tool calls and calls the methods of the
  class it builds, one per tool the environment declares (its ``tools``: JSON Schema, as
  calculator-tools has) or ``tools=`` names; each call is one turn of the environment, whose text
  is the call in the environment's format (its ``tool_call_template``, by default
  ``<tool>{call}</tool>``, ``{call}`` being ``{"name": ..., "arguments": ...}`` as JSON), the
  format ``envhub serve`` uses for OpenEnv's MCP tool calls.
  TRL never shows the environment the rollout's last message, so the reward function sends it as
  the final turn; the class therefore has no ``get_reward`` (that method takes no argument and
  could not see the final answer).

TRL hands a rollout function the prompts only, not the dataset's other columns, so the rows of
:meth:`TRLEnvironment.dataset` carry their task in the first prompt message's ``envhub_task``
field (chat templates ignore it).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from envhub.errors import EpisodeEndedError, InvalidOptionError

if TYPE_CHECKING:
    import datasets

__all__ = ["EpisodeOutcome", "TRLEnvironment", "tool_call_text", "with_tool_template"]

#: Key of the task in a dataset prompt's first message (see the module docstring).
TASK_KEY = "envhub_task"


def tool_call_text(name: str, arguments: Mapping[str, Any], *, template: str | None = None) -> str:
    """One tool call as the environment's action: ``template`` (an environment's
    ``tool_call_template``; envhub's default ``<tool>{call}</tool>``) with ``{call}`` replaced by
    ``{"name": ..., "arguments": ...}`` as JSON."""
    if template is None:
        from envhub.runtime.server.openenv import DEFAULT_TOOL_CALL_TEMPLATE as template
    return template.replace("{call}", json.dumps({"name": name, "arguments": dict(arguments)}))


def with_tool_template(tokenizer: Any) -> Any:
    """``tokenizer``, able to render tool calls for ``environment_factory``.

    A template that renders them is kept. A ChatML model whose template does not (the embedded
    SmolLM2-135M-Instruct) gets TRL's Qwen2.5 template: the same ChatML turns, plus tools in the
    system message and ``<tool_call>`` blocks, which TRL knows how to parse.
    """
    from trl.chat_template_utils import qwen2_5_chat_template, supports_tool_calling

    if supports_tool_calling(tokenizer):
        return tokenizer
    if "<|im_start|>" not in tokenizer.get_vocab():
        raise InvalidOptionError(
            getattr(tokenizer, "name_or_path", "tokenizer"), "chat_template",
            "renders no tool calls and is not ChatML; give the tokenizer a template that renders tools",
        )
    tokenizer.chat_template = qwen2_5_chat_template
    return tokenizer


# --- one episode ---------------------------------------------------------------------------------

@dataclass
class EpisodeOutcome:
    """What one rollout did to its environment: the reward TRL gets and why."""

    task_id: str
    messages: list[dict[str, Any]]
    ended: bool = False
    reward: float = 0.0
    rubric: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Episode:
    """One envhub environment, played one episode at a time."""

    env: Any
    outcome: EpisodeOutcome | None = field(default=None, init=False)

    def start(self, task: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """Reset to ``task``; its first messages, or None when the environment failed (recorded:
        a failing environment ends its episode, never the training run)."""
        self.outcome = EpisodeOutcome(task_id=str(task["task_id"]), messages=[])
        try:
            obs, _ = self.env.reset(seed=task.get("seed"), options={"task_id": task["task_id"], "split": task["split"]})
        except Exception as exc:  # noqa: BLE001 - the reward function reports it (reward None)
            self.outcome.error = f"{type(exc).__name__}: {exc}"
            return None
        self.outcome.messages = [dict(m) for m in obs]
        return self.outcome.messages

    def step(self, action: str) -> list[dict[str, Any]]:
        """Send ``action``; the environment's messages after it. An error ends the episode and is raised."""
        outcome = self.outcome
        if outcome is None or outcome.ended or outcome.error:
            raise EpisodeEndedError(self.env.identity.ref, "the episode has ended: give your final answer")
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception as exc:  # the environment's state is unknown: the episode is over
            outcome.error = f"{type(exc).__name__}: {exc}"
            raise
        before = len(outcome.messages) + 1  # the conversation so far and the action
        outcome.messages = [dict(m) for m in obs]
        outcome.reward += float(reward)
        if terminated or truncated:
            outcome.ended = True
            outcome.rubric = info.get("rubric")
        return outcome.messages[before:]

    def finish(self, final: str | None) -> EpisodeOutcome:
        """The rollout is over; ``final`` is its last assistant message, not yet sent (None: none)."""
        assert self.outcome is not None, "finish() before start()"
        if final is not None and not (self.outcome.ended or self.outcome.error):
            try:
                self.step(final)
            except Exception:  # noqa: BLE001 - recorded in the outcome; the reward function reports it
                pass
        return self.outcome


def _task_of_row(row: Mapping[str, Any], env_name: str) -> dict[str, Any]:
    missing = [k for k in ("task_id", "split") if row.get(k) is None]
    if missing:
        raise InvalidOptionError(
            env_name, "train_dataset", f"its rows have no {', '.join(missing)}: build it with TRLEnvironment.dataset()"
        )
    return {"task_id": row["task_id"], "split": row["split"], "seed": row.get("seed")}


def _check_prompt(prompt: Sequence[Mapping[str, Any]], messages: Sequence[Mapping[str, Any]], env_name: str, task_id: str) -> None:
    """The dataset's prompt is what the environment starts the task with (not a stale export)."""
    said = [(m.get("role"), m.get("content")) for m in prompt]
    if said != [(m["role"], m["content"]) for m in messages]:
        raise InvalidOptionError(
            env_name, "train_dataset",
            f"the prompt of task {task_id} is not what the environment starts it with: the dataset was built "
            "from another version or other environment arguments; build it again with TRLEnvironment.dataset()",
        )


# --- tools, as TRL finds them ----------------------------------------------------------------------

_PYTHON_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}


def _tool_spec(spec: Mapping[str, Any], env_name: str) -> dict[str, Any]:
    """A tool spec, checked: ``{"name", "description", "parameters"}`` (or MCP's ``input_schema``),
    bare or in OpenAI's ``{"type": "function", "function": {...}}``."""
    function = dict(spec.get("function", spec))
    name = function.get("name")
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_") or name in ("reset", "get_reward"):
        raise InvalidOptionError(env_name, "tools", f"tool name {name!r} must be a Python identifier, not reset or get_reward")
    parameters = function.get("parameters") or function.get("input_schema") or {}
    properties = parameters.get("properties") or {}
    bad = [p for p in properties if not p.isidentifier()]
    if bad:
        raise InvalidOptionError(env_name, "tools", f"{name}: parameter names {bad} must be Python identifiers")
    return {
        "name": name,
        "description": function.get("description") or f"Call the {name} tool.",
        "properties": properties,
        "required": set(parameters.get("required") or properties),
    }


def _tool_method(spec: Mapping[str, Any]) -> Callable[..., str]:
    """A method TRL reads as a tool: a signature with type hints and a Google-style docstring,
    which transformers turns back into ``spec``'s JSON schema for the chat template."""
    name = spec["name"]

    def call(self: _ToolEpisode, **arguments: Any) -> str:
        bound = call.__signature__.bind(self, **arguments)  # a wrong argument is a TypeError, as in any call
        return self._call_tool(name, {k: v for k, v in bound.arguments.items() if k != "self"})

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {}
    lines = []
    required = [p for p in spec["properties"] if p in spec["required"]]
    optional = [p for p in spec["properties"] if p not in spec["required"]]
    for pname in required + optional:  # Python wants the required ones first
        schema = spec["properties"][pname]
        annotations[pname] = _PYTHON_TYPES.get(schema.get("type"), str)
        default = inspect.Parameter.empty if pname in spec["required"] else schema.get("default")
        params.append(inspect.Parameter(pname, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotations[pname]))
        lines.append(f"    {pname}: {' '.join(str(schema.get('description') or pname).split())}")
    call.__name__ = call.__qualname__ = name
    call.__doc__ = spec["description"] + ("\n\nArgs:\n" + "\n".join(lines) if lines else "")
    call.__annotations__ = {**annotations, "return": str}
    call.__signature__ = inspect.Signature(params, return_annotation=str)  # type: ignore[attr-defined]
    return call


class _ToolEpisode:
    """Base of the class ``environment_factory`` builds. TRL exposes every public function of the
    class as a tool, so everything here but ``reset`` is private."""

    _spec: TRLEnvironment  # set on the subclass

    def __init__(self) -> None:
        self._episode = _Episode(self._spec._make())

    def reset(self, **row: Any) -> None:
        """Start the row's task; the dataset's prompt already holds its first messages."""
        task = _task_of_row(row, self._spec.env_name)
        messages = self._episode.start(task)
        if messages is not None and row.get("prompt") is not None:
            _check_prompt(row["prompt"], messages, self._spec.env_name, task["task_id"])
        return None

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> str:
        replies = self._episode.step(self._spec.render_call(name, arguments))
        return "\n".join(m["content"] for m in replies)


def _final_message(completion: Any) -> str | None:
    """The completion's last assistant message, when it is one the environment has not seen."""
    if isinstance(completion, str):
        return completion
    last = completion[-1] if completion else None
    if not last or last.get("role") != "assistant" or last.get("tool_calls"):
        return None  # a tool result, or calls TRL did not run (its tool-call bound)
    return last.get("content") or ""


# --- the rollout function --------------------------------------------------------------------------

_SENTINEL = "\x00envhub-turn\x00"


def _render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool, kwargs: Mapping[str, Any]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)


def _between_turns(tokenizer: Any, history: list[dict[str, Any]], replies: list[dict[str, Any]],
                   stopped_with: str | None, kwargs: Mapping[str, Any]) -> list[int]:
    """Tokens from the end of a sampled assistant turn to the start of the next: the end-of-turn
    marker (unless the model sampled it), the environment's messages, the generation prompt.

    The assistant's text is replaced by a sentinel, so its sampled tokens are never re-tokenised.
    """
    probe = history[:-1] + [{"role": "assistant", "content": _SENTINEL}]
    base = _render(tokenizer, probe, False, kwargs)
    full = _render(tokenizer, probe + replies, True, kwargs)
    at = base.rfind(_SENTINEL)
    if at < 0 or not full.startswith(base):
        raise ValueError("the chat template is not append-only; multi-turn rollouts need one that is")
    tail = base[at + len(_SENTINEL):]
    if stopped_with and tail.startswith(stopped_with):
        tail = tail[len(stopped_with):]
    return tokenizer(tail + full[len(base):], add_special_tokens=False)["input_ids"]


@dataclass
class _Rollout:
    episode: _Episode
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    done: bool = False


class _RolloutFunc:
    """``rollout_func(prompts, trainer)``: one whole episode per prompt (TRL repeats each prompt
    ``num_generations`` times), all live episodes generating a turn together."""

    def __init__(self, spec: TRLEnvironment) -> None:
        self._spec = spec
        self._pool: list[_Episode] = []  # environments are made once and reused batch after batch

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        if getattr(trainer, "use_vllm", False):
            raise InvalidOptionError(
                self._spec.env_name, "use_vllm", "envhub's rollout function generates with transformers; set use_vllm=False"
            )
        tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        template_kwargs = getattr(trainer, "chat_template_kwargs", None) or {}
        while len(self._pool) < len(prompts):
            self._pool.append(_Episode(self._spec._make()))
        rollouts = []
        for prompt, episode in zip(prompts, self._pool):
            task = self._spec._task_of_prompt(prompt)
            messages = episode.start(task)
            if messages is not None:
                _check_prompt(prompt, messages, self._spec.env_name, task["task_id"])
            shown = messages if messages is not None else [{"role": m["role"], "content": m["content"]} for m in prompt]
            ids = tokenizer.apply_chat_template(shown, add_generation_prompt=True, tokenize=True, return_dict=True, **template_kwargs)["input_ids"]
            rollout = _Rollout(episode, list(ids))
            if messages is None:  # the environment failed: one masked end-of-turn token, reward None
                rollout.completion_ids, rollout.env_mask, rollout.done = [tokenizer.eos_token_id], [0], True
            rollouts.append(rollout)
        budget = trainer.max_completion_length
        eos = set(trainer.eos_token_ids)
        while live := [r for r in rollouts if not r.done]:
            room = max(budget - len(r.completion_ids) for r in live)
            turns = self._generate(trainer, tokenizer, live, min(room, self._spec.max_turn_tokens or room))
            for rollout, sampled in zip(live, turns):
                sampled = sampled[: budget - len(rollout.completion_ids)]
                if any(t in eos for t in sampled):  # keep the stop token, drop what follows it
                    sampled = sampled[: next(i for i, t in enumerate(sampled) if t in eos) + 1]
                rollout.completion_ids += sampled
                rollout.env_mask += [1] * len(sampled)
                self._advance(rollout, tokenizer, sampled, eos, budget, template_kwargs)
        return {
            "prompt_ids": [r.prompt_ids for r in rollouts],
            "completion_ids": [r.completion_ids for r in rollouts],
            "logprobs": None,  # TRL computes the old policy's log-probabilities itself
            "env_mask": [r.env_mask for r in rollouts],
            "envhub_episode": [r.episode.finish(None).to_dict() for r in rollouts],
        }

    def _advance(self, rollout: _Rollout, tokenizer: Any, sampled: list[int], eos: set[int], budget: int,
                 template_kwargs: Mapping[str, Any]) -> None:
        """Send the sampled turn; queue the environment's answer, or end the rollout."""
        text = tokenizer.decode(sampled, skip_special_tokens=True)
        history = rollout.episode.outcome.messages + [{"role": "assistant", "content": text}]
        try:
            replies = rollout.episode.step(text)
        except Exception:  # noqa: BLE001 - recorded in the outcome; never raised into the trainer
            rollout.done = True
            return
        if rollout.episode.outcome.ended:
            rollout.done = True
            return
        stopped = tokenizer.decode([sampled[-1]]) if sampled and sampled[-1] in eos else None
        bridge = _between_turns(tokenizer, history, replies, stopped, template_kwargs)
        if len(rollout.completion_ids) + len(bridge) >= budget:
            rollout.done = True  # no room for another turn: TRL's completion budget is spent
            return
        rollout.completion_ids += bridge
        rollout.env_mask += [0] * len(bridge)

    @staticmethod
    def _generate(trainer: Any, tokenizer: Any, live: list[_Rollout], max_new_tokens: int) -> list[list[int]]:
        """One turn of every live rollout, sampled with the trainer's generation settings."""
        import torch
        from trl.models import unwrap_model_for_generation

        rows = [r.prompt_ids + r.completion_ids for r in live]
        width = max(map(len, rows))
        pad = tokenizer.pad_token_id
        device = trainer.accelerator.device
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)  # left-padded
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model, torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention,
                                 generation_config=trainer.generation_config, max_new_tokens=max_new_tokens)
        return [row[width:].tolist() for row in out.cpu()]


# --- the adapter -----------------------------------------------------------------------------------

class TRLEnvironment:
    """An envhub environment in the shapes ``GRPOTrainer`` takes (see the module docstring).

    ``env_id`` and ``env_kwargs`` are what ``envhub.make`` takes; ``runtime`` where the
    environment runs. ``tools`` (JSON-Schema tool specs) replace the ones the environment declares,
    for :attr:`environment_factory`; ``render_call(name, arguments)`` replaces its
    ``tool_call_template`` to turn one call into the environment's action text.
    ``max_turn_tokens`` bounds each turn of :attr:`rollout_func` (TRL's ``max_completion_length``
    bounds the whole episode: the sampled turns and the environment's messages between them).
    """

    def __init__(
        self,
        env_id: str | os.PathLike[str],
        *,
        runtime: str = "inprocess",
        tools: Sequence[Mapping[str, Any]] | None = None,
        render_call: Callable[[str, Mapping[str, Any]], str] | None = None,
        max_turn_tokens: int | None = None,
        **env_kwargs: Any,
    ) -> None:
        self.env_id = env_id
        self.max_turn_tokens = max_turn_tokens
        self.runtime = runtime
        self.env_kwargs = env_kwargs
        probe = self._make()  # fails here, with envhub's message, on a bad id or bad arguments
        try:
            self.identity = probe.identity
            declared = getattr(probe, "unwrapped", probe)
            template = getattr(declared, "tool_call_template", None)
            tools = getattr(declared, "tools", None) if tools is None else tools
        finally:
            probe.close()
        self.env_name = self.identity.ref
        self.tools = [_tool_spec(t, self.env_name) for t in tools or ()]
        self.render_call = render_call or (lambda name, arguments: tool_call_text(name, arguments, template=template))

    def _make(self) -> Any:
        from envhub.runtime.make import make

        return make(self.env_id, runtime=self.runtime, **self.env_kwargs)

    def dataset(self, *, split: str = "train", n: int | None = None) -> datasets.Dataset:
        """The tasks to train on: :func:`envhub.integrations.datasets.task_rows`, each prompt's
        first message carrying its task (``envhub_task``) for the rollout function."""
        from datasets import Dataset

        from envhub.integrations.datasets import task_rows

        env = self._make()
        try:
            rows = task_rows(env, split=split, n=n, env_kwargs=self.env_kwargs)
        finally:
            env.close()
        for row in rows:
            task = json.dumps({"task_id": row["task_id"], "split": row["split"], "seed": row["seed"]})
            row["prompt"][0] = {**row["prompt"][0], TASK_KEY: task}
        return Dataset.from_list(rows)

    def _task_of_prompt(self, prompt: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        key = prompt[0].get(TASK_KEY) if prompt and isinstance(prompt[0], Mapping) else None
        if not key:
            raise InvalidOptionError(
                self.env_name, "train_dataset",
                f"a prompt has no {TASK_KEY} in its first message: build the dataset with TRLEnvironment.dataset()",
            )
        return json.loads(key)

    @cached_property
    def rollout_func(self) -> Callable[[list[Any], Any], dict[str, Any]]:
        """``GRPOTrainer(rollout_func=...)``: whole multi-turn episodes in envhub's text protocol."""
        return _RolloutFunc(self)

    @cached_property
    def environment_factory(self) -> type:
        """``GRPOTrainer(environment_factory=...)``: a class with ``reset`` and one method per tool."""
        if not self.tools:
            raise InvalidOptionError(
                self.env_name, "tools",
                "environment_factory needs tools: this environment declares none (name them with "
                "TRLEnvironment(..., tools=[...])), or train it with rollout_func",
            )
        methods: dict[str, Any] = {spec["name"]: _tool_method(spec) for spec in self.tools}
        methods["_spec"] = self
        name = "".join(part.capitalize() for part in self.identity.name.replace("_", "-").split("-")) + "Tools"
        return type(name, (_ToolEpisode,), methods)

    @property
    def reward_funcs(self) -> list[Callable[..., list[float | None]]]:
        """``GRPOTrainer(reward_funcs=...)``: the environment's reward, :meth:`rubric`."""
        return [self.rubric]

    def rubric(self, completions: list[Any], *, environments: Sequence[Any] | None = None,
               envhub_episode: Sequence[Mapping[str, Any]] | None = None,
               log_metric: Callable[[str, float], None] | None = None,
               log_extra: Callable[[str, list], None] | None = None, **_: Any) -> list[float | None]:
        """The reward of each completion: its episode's per-step rewards plus the rubric's total.

        With ``environments`` (the factory's instances) each rollout's last message is sent as its
        final turn first; with ``envhub_episode`` (the rollout function's records) the episodes are
        already over. An episode that ended in an environment error gets None (TRL leaves it out).
        """
        if environments is not None:
            outcomes = [env._episode.finish(_final_message(c)) for env, c in zip(environments, completions)]
        elif envhub_episode is not None:
            outcomes = [EpisodeOutcome(**e) for e in envhub_episode]
        else:
            raise InvalidOptionError(
                self.env_name, "reward_funcs",
                "the rubric reward needs environment_factory or rollout_func from the same TRLEnvironment",
            )
        rewards = [None if o.error else o.reward for o in outcomes]
        self._log(outcomes, log_metric, log_extra)
        return rewards

    @staticmethod
    def _log(outcomes: list[EpisodeOutcome], log_metric: Callable | None, log_extra: Callable | None) -> None:
        criteria: dict[str, list[float | None]] = {}
        for i, o in enumerate(outcomes):
            for name, c in ((o.rubric or {}).get("criteria") or {}).items():
                criteria.setdefault(name, [None] * len(outcomes))[i] = c.get("score")
        if log_metric is not None:
            log_metric("envhub/ended", sum(o.ended for o in outcomes) / max(len(outcomes), 1))
            for name, scores in criteria.items():
                scored = [s for s in scores if s is not None]
                if scored:
                    log_metric(f"rubric/{name}", sum(scored) / len(scored))
        if log_extra is not None:
            log_extra("envhub/task_id", [o.task_id for o in outcomes])
            log_extra("envhub/ended", [o.ended for o in outcomes])
            log_extra("envhub/error", [o.error for o in outcomes])
            log_extra("envhub/conversation", [json.dumps(o.messages) for o in outcomes])
            for name, scores in criteria.items():
                log_extra(f"rubric/{name}", scores)

