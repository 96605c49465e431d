"""Arithmetic: one problem, one answer, scored exactly.

Problems are generated from a seed, so there is no dataset to ship. A problem belongs to the train
or the test split by a hash of its text (20% test), so the two splits never share a problem however
many are drawn. Task ids encode level and generator seed (``easy-1234``): ``reset`` can replay any
task by id.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from envhub import ChatEnv, Rubric, Score, criterion, user
from envhub.errors import InvalidOptionError, TaskNotFoundError

LEVELS = {
    # level: (operand count, operand range, operators)
    "starter": (2, (0, 20), "+-"),
    "easy": (2, (0, 50), "+-"),
    "medium": (2, (10, 999), "+-*"),
    "hard": (3, (2, 99), "+-*"),
}
TEST_FRACTION = 0.2

# A worked example, not a bare tag: SmolLM2-135M-Instruct wrote the tag in none of 224 samples
# when the prompt only said "for example <answer>42</answer>", and a trained policy copied a bare
# 42. The instructions go in the user turn, before the question: there the same model follows them
# (greedy, 70% with the tag against 22% from a system message; README.md, "Versions").
INSTRUCTIONS = (
    "Solve the arithmetic problem. Think briefly if you need to, then give the final answer as an "
    "integer inside answer tags.\n\nExample:\nWhat is 7 + 5?\n7 + 5 = 12. <answer>12</answer>"
)
ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
INTEGER = re.compile(r"-?\d+")


def split_of(expression: str) -> str:
    """The split a problem belongs to, fixed by its text."""
    bucket = int.from_bytes(hashlib.sha256(expression.encode()).digest()[:4], "big") / 2**32
    return "test" if bucket < TEST_FRACTION else "train"


def generate(level: str, seed: int) -> dict:
    """The problem of ``level`` drawn from ``seed``."""
    count, (low, high), ops = LEVELS[level]
    rng = np.random.default_rng(seed)
    numbers = [int(n) for n in rng.integers(low, high + 1, size=count)]
    operators = [str(rng.choice(list(ops))) for _ in range(count - 1)]
    expression = str(numbers[0])
    for op, n in zip(operators, numbers[1:]):
        expression += f" {op} {n}"
    if count == 3 and rng.random() < 0.5:  # hard: half of the problems get parentheses
        left, _, right = expression.rpartition(f" {operators[-1]} ")
        expression = f"({left}) {operators[-1]} {right}"
    return {"id": f"{level}-{seed}", "level": level, "expression": expression, "answer": _evaluate(expression)}


def _evaluate(expression: str) -> int:
    # Only digits, spaces, + - * and parentheses are ever generated, so eval sees no names.
    assert re.fullmatch(r"[\d\s+\-*()]+", expression)
    return int(eval(expression, {"__builtins__": {}}))  # noqa: S307


def extract_answer(text: str) -> str | None:
    """The answer: inside the last <answer> tag, else the last integer in the text."""
    tags = ANSWER_TAG.findall(text)
    if tags:
        return tags[-1]
    numbers = INTEGER.findall(text)
    return numbers[-1] if numbers else None


@criterion(weight=0.8)
def correct(episode) -> Score:
    """The answer equals the exact result."""
    answer = extract_answer(episode.completion)
    expected = episode.task["answer"]
    if answer is None:
        return Score(0.0, "no answer found")
    try:
        ok = int(answer.replace(",", "").strip()) == expected
    except ValueError:
        return Score(0.0, f"answer {answer!r} is not an integer")
    return Score(float(ok), f"answered {answer}, expected {expected}")


@criterion(weight=0.2)
def answer_format(episode) -> Score:
    """Exactly one <answer> tag, holding only an integer."""
    tags = ANSWER_TAG.findall(episode.completion)
    if len(tags) != 1:
        return Score(0.0, f"{len(tags)} answer tags, expected exactly one")
    if not re.fullmatch(r"-?\d+", tags[0]):
        return Score(0.0, "the answer tag does not hold a plain integer")
    return Score(1.0, "one answer tag with an integer")


class Arithmetic(ChatEnv):
    max_turns = 1
    rubric = Rubric([correct, answer_format], name="arithmetic")

    def __init__(self, *, level: str = "easy", **kwargs) -> None:
        super().__init__(**kwargs)
        if level not in LEVELS:
            raise InvalidOptionError("envhub/arithmetic", "level", f"{level!r} is not one of {list(LEVELS)}")
        self.level = level

    def sample_task(self, rng: np.random.Generator, split: str) -> dict:
        # Rejection sampling by split: about 1 in 5 draws lands in test, so this ends quickly.
        while True:
            task = generate(self.level, int(rng.integers(2**31)))
            if split_of(task["expression"]) == split:
                return task

    def get_task(self, task_id: str, split: str) -> dict:
        level, _, seed = task_id.rpartition("-")
        if level not in LEVELS or not seed.isdigit():
            raise TaskNotFoundError("envhub/arithmetic", task_id)
        task = generate(level, int(seed))
        if split_of(task["expression"]) != split:
            raise TaskNotFoundError("envhub/arithmetic", f"{task_id} (it belongs to the other split)")
        return task

    def initial_messages(self, task: dict) -> list[dict]:
        return [user(f"{INSTRUCTIONS}\n\nWhat is {task['expression']}?")]

    def reference_action(self, episode) -> str:
        return f"<answer>{episode.task['answer']}</answer>"


def make_env(**kwargs) -> Arithmetic:
    return Arithmetic(**kwargs)
