"""The environment behind every folder ``envhub import reasoning-gym`` writes: a set of reasoning-gym
tasks as one single-turn envhub environment.

- Tasks: reasoning-gym's procedural datasets (``basic_arithmetic``, ``letter_counting``, ...), each
  with its own configuration (difficulty options), drawn uniformly by task.
- Splits: each task's test split is ``test_size`` problems from a seed of its own; the train split
  draws from ``train_size`` problems of another seed and skips every problem whose question is in
  the test split (the import records the test questions' digests in ``held_out.json``, so the
  splits never share a problem). Task ids are ``TASK/INDEX``.
- Prompt: ``few-shot`` (what the import writes): first exchanges solve ``shots`` train problems of
  the same task, then the question; ``system``: a system message with the instructions, then the
  question (what folders imported before the option existed play).
- Rubric: ``correct`` (0.9) is reasoning-gym's own ``score_answer`` on the one answer inside the
  reply's ``<answer>`` tag; ``answer_format`` (0.1) is exactly one non-empty tag. Hedging is not
  paid: a reply with several tags scores 0, an answer far longer than the expected one scores 0,
  and the containment credit of reasoning-gym's default scorer (which pays an answer that merely
  contains the expected one) is not given.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envhub.env.core import ChatEnv, Episode, Msg, Task, assistant, system, user
from envhub.env.rubric import Criterion, FunctionCriterion, Rubric, Score
from envhub.errors import EnvironmentFailure, InvalidOptionError, TaskNotFoundError, suggest

SYSTEM_PROMPT = (
    "Solve the problem. Think it through if that helps, then give your final answer once, inside "
    "<answer></answer> tags, with nothing but the answer inside them. Follow any answer format the "
    "problem asks for."
)
# Solved problems as exchanges of their own, not instructions alone: SmolLM2-135M-Instruct, greedy,
# on easy settings of 14 task families, wrote the tag in 0 of 304 replies with the instructions as a
# system message (and 0 of 64 over 4 families with them, or them and a solved example, in the user
# turn); with one solved exchange first in 263 of 304 (it copies the reply's shape). Over 9 families
# (216 replies), 1, 2 and 3 exchanges: tag 201, 216, 216; correct 57, 62, 60. Two copy less of one
# example's answer (a first example of -1 had the model put a minus sign before every answer).
INSTRUCTIONS = "Solve the problem. Think briefly if you need to, then give the final answer inside answer tags."
#: How the question is put: see the module's docstring.
PROMPTS = ("few-shot", "system")
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
#: The file of the test split's question digests, per task, written by the import.
HELD_OUT_FILE = "held_out.json"
#: Draws of a train problem before giving up on finding one that is not held out.
_TRAIN_DRAWS = 64


def question_digest(question: str) -> str:
    return hashlib.sha256(question.encode()).hexdigest()[:16]


def split_seed(seed: int, task: str, split: str) -> int:
    """The dataset seed of one task's split: fixed by the import's seed, different for each split."""
    return zlib.crc32(f"{seed}/{task}/{split}".encode()) & 0x7FFFFFFF


def answer_in_tag(text: str) -> tuple[str | None, str]:
    """(the one answer inside ``<answer>`` tags, or None; why not)."""
    found = ANSWER_TAG.findall(text)
    if not found:
        return None, "no <answer> tag"
    if len(found) > 1:
        return None, f"{len(found)} <answer> tags: give one answer"
    answer = found[0].strip()
    if not answer:
        return None, "the <answer> tag is empty"
    return answer, ""


def is_hedge(answer: str, expected: str) -> bool:
    """An answer far longer than the expected one is a list of candidates, not one answer."""
    return len(answer) > max(2 * len(expected), len(expected) + 16)


class SourceScore(Criterion):
    """reasoning-gym's own ``score_answer`` of the task, on the one answer in the ``<answer>`` tag."""

    kind = "function"

    def __init__(self, env: ReasoningGymEnv, *, weight: float) -> None:
        super().__init__("correct", weight=weight)
        self.env = env

    def fingerprint(self) -> str:
        blob = json.dumps({"package": "reasoning-gym", "version": self.env.package_version, "tasks": self.env.task_names,
                           "config": self.env.config, "rules": _source_hash()}, sort_keys=True, default=str)  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()

    def check(self, episode: Episode) -> Score:
        answer, why = answer_in_tag(episode.completion)
        if answer is None:
            return Score(0.0, why)
        task = episode.task
        entry = task["entry"]
        expected = entry.get("answer")
        if isinstance(expected, str) and is_hedge(answer, expected):
            return Score(0.0, f"the answer has {len(answer)} characters, the expected one {len(expected)}: "
                              "one answer, not a list of candidates")  # fmt: skip
        dataset = self.env.dataset(task["task"], episode.split)
        value = dataset.score_answer(answer, entry)  # the source's scorer: whatever it raises is a CriterionError
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"reasoning-gym's {task['task']}.score_answer returned {type(value).__name__} {value!r}")
        value = float(value)
        if 0.0 < value < 1.0 and self.env.uses_default_scorer(task["task"]):
            return Score(0.0, f"contains the expected answer among other text (reasoning-gym's default scorer "
                              f"would give {value:.3f} for that; no credit for hedging)")  # fmt: skip
        shown = f"expected {expected!r}" if isinstance(expected, str) else "checked by the task's own verifier"
        return Score(value, f"reasoning-gym {task['task']}.score_answer: {value:.3f} ({shown})")


def _answer_format(episode: Episode) -> Score:
    answer, why = answer_in_tag(episode.completion)
    return Score(1.0, "one <answer> tag") if answer is not None else Score(0.0, why)


def _source_hash() -> str:
    """What this module's scoring rules are, for the rubric's hash."""
    source = "".join(inspect.getsource(fn) for fn in (answer_in_tag, is_hedge, SourceScore.check, _answer_format))
    return hashlib.sha256(source.encode()).hexdigest()


class ReasoningGymEnv(ChatEnv):
    """A set of reasoning-gym tasks, single-turn, scored by reasoning-gym's own scorers.

    Args:
        tasks: reasoning-gym dataset names.
        config: per task, its configuration fields (difficulty options), as reasoning-gym names them.
        seed: fixes every task's train and test problems.
        train_size: problems per task the train split draws from (generated when drawn).
        test_size: problems per task in the test split.
        package_version: the reasoning-gym version the folder was imported from (recorded in the rubric's hash).
        prompt: ``few-shot`` (solved train problems of the same task first) or ``system`` (the
            instructions as a system message); a task with no single expected answer has no
            solved examples and is put as ``system``.
        shots: how many solved problems ``few-shot`` shows.
        folder: the environment's folder: its ``held_out.json`` (written by the import) holds the
            test split's question digests of each task; a task whose digests it lacks, or that were
            taken with another seed, test size or configuration, has them computed on first use.
    """

    max_turns = 1

    def __init__(
        self,
        *,
        tasks: Sequence[str],
        config: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
        train_size: int = 10_000,
        test_size: int = 100,
        package_version: str | None = None,
        prompt: str = "system",
        shots: int = 2,
        folder: str | Path | None = None,
        max_turns: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(max_turns=max_turns, render_mode=render_mode)
        import reasoning_gym.factory as factory
        from reasoning_gym.dataset import ProceduralDataset

        self._factory = factory
        self._default_score = ProceduralDataset.score_answer
        names = list(tasks)
        if not names:
            raise InvalidOptionError(self.env_name, "tasks", "give at least one reasoning-gym task")
        unknown = [t for t in names if t not in factory.DATASETS or t == "composite"]
        if unknown:
            near = {t: suggest(t, factory.DATASETS) for t in unknown}
            shown = "; ".join(f"{t}" + (f" (did you mean {', '.join(near[t])}?)" if near[t] else "") for t in unknown)
            raise InvalidOptionError(self.env_name, "tasks", f"not reasoning-gym tasks: {shown}")
        for name, value in (("train_size", train_size), ("test_size", test_size)):
            if not isinstance(value, int) or value < 1:
                raise InvalidOptionError(self.env_name, name, f"must be an int >= 1, got {value!r}")
        if prompt not in PROMPTS:
            raise InvalidOptionError(self.env_name, "prompt", f"{prompt!r} is not one of {', '.join(PROMPTS)}")
        if not isinstance(shots, int) or shots < 1:
            raise InvalidOptionError(self.env_name, "shots", f"must be an int >= 1, got {shots!r}")
        self.prompt = prompt
        self.shots = shots
        self.task_names = names
        self.config = {t: dict((config or {}).get(t, {})) for t in names}
        self.seed = int(seed)
        self.train_size = train_size
        self.test_size = test_size
        self.package_version = package_version
        self._datasets: dict[tuple[str, str], Any] = {}
        for task in names:  # build them now: a bad difficulty option is an error here, not at the first reset
            for split in self.splits:
                self.dataset(task, split)
        self._held_out: dict[str, frozenset[str]] = {}
        self._examples: dict[str, list[Task]] = {}
        recorded = Path(folder) / HELD_OUT_FILE if folder is not None else None
        if recorded is not None and recorded.is_file():
            saved = json.loads(recorded.read_text())
            for task, entry in saved.get("tasks", {}).items():
                if task in self.config and entry == self.held_out_record(task, entry["digests"]):
                    self._held_out[task] = frozenset(entry["digests"])
        self.rubric = Rubric([SourceScore(self, weight=0.9), FunctionCriterion(_answer_format, name="answer_format", weight=0.1)])

    # --- the datasets ----------------------------------------------------------------------------

    def dataset(self, task: str, split: str) -> Any:
        """reasoning-gym's dataset of one task's split."""
        key = (task, split)
        if key not in self._datasets:
            fields = self.config[task]
            reserved = sorted({"seed", "size"} & set(fields))
            if reserved:
                raise InvalidOptionError(self.env_name, f"config.{task}", f"{', '.join(reserved)} are set by the split; use seed, train_size, test_size")
            size = self.train_size if split == "train" else self.test_size
            try:
                self._datasets[key] = self._factory.create_dataset(task, seed=split_seed(self.seed, task, split), size=size, **fields)
            except (TypeError, ValueError, AssertionError) as exc:
                raise InvalidOptionError(self.env_name, f"config.{task}", f"reasoning-gym refuses it for the {split} split of {size} problems: {type(exc).__name__}: {exc}") from exc
        return self._datasets[key]

    def uses_default_scorer(self, task: str) -> bool:
        return type(self.dataset(task, "test")).score_answer is self._default_score

    def held_out_digests(self, task: str) -> list[str]:
        """The digests of the test split's questions of ``task`` (generates every test problem once)."""
        dataset = self.dataset(task, "test")
        return sorted({question_digest(dataset[i]["question"]) for i in range(self.test_size)})

    def held_out_record(self, task: str, digests: Sequence[str]) -> dict[str, Any]:
        """What ``held_out.json`` keeps of one task: its digests and the settings they were taken with."""
        return {"seed": self.seed, "test_size": self.test_size, "config": self.config[task], "digests": list(digests)}

    def _entry(self, task: str, index: int, split: str) -> Task:
        try:
            entry = self.dataset(task, split)[index]
        except Exception as exc:
            raise EnvironmentFailure(self.env_name, "reset", f"reasoning-gym {task}[{index}] raised {type(exc).__name__}: {exc}") from exc
        return {"id": f"{task}/{index}", "task": task, "index": index, "question": entry["question"], "entry": entry}

    def _is_held_out(self, task: Task) -> bool:
        name = task["task"]
        if name not in self._held_out:
            self._held_out[name] = frozenset(self.held_out_digests(name))
        return question_digest(task["question"]) in self._held_out[name]

    # --- the contract ----------------------------------------------------------------------------

    def _too_few(self, name: str) -> EnvironmentFailure:
        return EnvironmentFailure(
            self.env_name, "reset",
            f"{_TRAIN_DRAWS} train problems of {name} in a row are in its test split: its problems are too few "
            "at this difficulty for two disjoint splits (raise the difficulty, or lower test_size)",
        )

    def examples(self, name: str) -> list[Task]:
        """The solved problems the few-shot prompt shows for task ``name``: its first ``shots`` train
        problems outside the test split; none where the task has no single expected answer."""
        if name not in self._examples:
            found: list[Task] = []
            for index in range(min(_TRAIN_DRAWS + self.shots, self.train_size)):
                task = self._entry(name, index, "train")
                if not self._is_held_out(task):
                    found.append(task)
                if len(found) == self.shots:
                    break
            if not found:
                raise self._too_few(name)
            self._examples[name] = found if all(isinstance(t["entry"].get("answer"), str) for t in found) else []
        return self._examples[name]

    def sample_task(self, rng: np.random.Generator, split: str) -> Task:
        name = self.task_names[int(rng.integers(len(self.task_names)))]
        size = self.train_size if split == "train" else self.test_size
        for _ in range(_TRAIN_DRAWS if split == "train" else 1):
            task = self._entry(name, int(rng.integers(size)), split)
            if split != "train" or not self._is_held_out(task):
                return task
        raise self._too_few(name)

    def get_task(self, task_id: str, split: str) -> Task:
        name, _, index = task_id.rpartition("/")
        size = self.train_size if split == "train" else self.test_size
        if name not in self.task_names or not index.isdigit() or int(index) >= size:
            examples = [f"{t}/0" for t in self.task_names]
            raise TaskNotFoundError(self.env_name, task_id, examples)
        task = self._entry(name, int(index), split)
        if split == "train" and self._is_held_out(task):
            raise TaskNotFoundError(self.env_name, f"{task_id} (its question is in the test split)")
        return task

    def initial_messages(self, task: Task) -> list[Msg]:
        examples = self.examples(task["task"]) if self.prompt == "few-shot" else []
        if not examples:
            return [system(SYSTEM_PROMPT), user(task["question"])]
        shown: list[Msg] = []
        for example in examples:
            answer = example["entry"]["answer"]
            shown += [user(example["question"]), assistant(f"The answer is {answer}. <answer>{answer}</answer>")]
        shown[0] = user(f"{INSTRUCTIONS}\n\n{examples[0]['question']}")
        return [*shown, user(task["question"])]

    def reference_action(self, episode: Episode) -> str | None:
        answer = episode.task["entry"].get("answer")
        return f"<answer>{answer}</answer>" if isinstance(answer, str) else None
