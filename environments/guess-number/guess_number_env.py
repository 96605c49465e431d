"""Guess the number: the environment thinks of an integer, the model guesses, the environment says
higher or lower, until the model finds it or runs out of turns.

A task is a range (the level) and a secret drawn from the task's generator seed; the task id is
``level-seed``, so ``reset(options={"task_id": ...})`` replays any game. Each (level, secret) pair
belongs to the train or the test split by a hash (20% test), so the splits never share a game.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np

from envhub import ChatEnv, Reply, Rubric, Score, criterion, system, user
from envhub.errors import InvalidOptionError, TaskNotFoundError

LEVELS = {"easy": 30, "medium": 100, "hard": 1000}  # level: the secret is in 1..high
TEST_FRACTION = 0.2

SYSTEM_PROMPT = (
    "Let's play a guessing game. I am thinking of a whole number in a range I will tell you. Each "
    "turn, make exactly one guess, written as <guess>NUMBER</guess>; I will answer higher, lower or "
    "correct. Find the number in as few guesses as you can."
)
GUESS_TAG = re.compile(r"<guess>\s*(.*?)\s*</guess>", re.S | re.I)


def split_of(level: str, secret: int) -> str:
    """The split a game belongs to, fixed by its level and secret."""
    digest = hashlib.sha256(f"{level}:{secret}".encode()).digest()
    return "test" if int.from_bytes(digest[:4], "big") / 2**32 < TEST_FRACTION else "train"


def generate(level: str, seed: int) -> dict:
    """The game of ``level`` drawn from ``seed``."""
    high = LEVELS[level]
    secret = int(np.random.default_rng(seed).integers(1, high + 1))
    return {"id": f"{level}-{seed}", "level": level, "low": 1, "high": high, "secret": secret}


def optimal_guesses(task: dict) -> int:
    """Guesses binary search needs in the worst case: ceil(log2(n + 1)) for n candidates."""
    return math.ceil(math.log2(task["high"] - task["low"] + 2))


def parse_guess(text: str, task: dict) -> tuple[int | None, str]:
    """The guess in ``text`` and, when there is none, what is wrong with the message."""
    tags = GUESS_TAG.findall(text)
    if len(tags) != 1:
        return None, f"found {len(tags)} <guess> tags, expected exactly one"
    if not re.fullmatch(r"[+-]?\d{1,9}", tags[0]):
        return None, f"{tags[0][:40]!r} is not a whole number"
    guess = int(tags[0])
    if not task["low"] <= guess <= task["high"]:
        return None, f"{guess} is outside {task['low']}..{task['high']}"
    return guess, ""


def guesses(episode) -> list[int | None]:
    """The parsed guess of each assistant turn (None for an unreadable one)."""
    return [parse_guess(text, episode.task)[0] for text in episode.assistant_messages]


@criterion(weight=0.6)
def solved(episode) -> Score:
    """The secret number was guessed."""
    ok = episode.task["secret"] in guesses(episode)
    return Score(float(ok), "found the number" if ok else "never guessed the number")


@criterion(weight=0.3)
def efficiency(episode) -> Score:
    """Solved within binary search's worst case scores 1, dropping linearly to 0 at max_turns + 1."""
    made = guesses(episode)
    if episode.task["secret"] not in made:
        return Score(0.0, "not solved")
    turns = made.index(episode.task["secret"]) + 1
    bound = optimal_guesses(episode.task)
    if turns <= bound:
        return Score(1.0, f"solved in {turns} turns (binary search needs at most {bound})")
    value = max(0.0, 1.0 - (turns - bound) / (episode.max_turns - bound + 1))
    return Score(value, f"solved in {turns} turns, {turns - bound} more than binary search needs")


@criterion(weight=0.1)
def guess_format(episode) -> Score:
    """The share of turns holding exactly one readable <guess> in range."""
    made = guesses(episode)
    if not made:
        return Score(0.0, "no turns")
    readable = sum(g is not None for g in made)
    return Score(readable / len(made), f"{readable} of {len(made)} turns held a readable guess")


class GuessNumber(ChatEnv):
    max_turns = 10
    rubric = Rubric([solved, efficiency, guess_format], name="guess-number")

    def __init__(self, *, level: str = "medium", **kwargs) -> None:
        super().__init__(**kwargs)
        if level not in LEVELS:
            raise InvalidOptionError(self.env_name, "level", f"{level!r} is not one of {list(LEVELS)}")
        self.level = level

    def sample_task(self, rng: np.random.Generator, split: str) -> dict:
        while True:  # rejection sampling: one draw in five lands in test
            task = generate(self.level, int(rng.integers(2**31)))
            if split_of(task["level"], task["secret"]) == split:
                return task

    def get_task(self, task_id: str, split: str) -> dict:
        level, _, seed = task_id.rpartition("-")
        if level not in LEVELS or not seed.isdigit():
            raise TaskNotFoundError(self.env_name, task_id)
        task = generate(level, int(seed))
        if split_of(level, task["secret"]) != split:
            raise TaskNotFoundError(self.env_name, f"{task_id} (it belongs to the other split)")
        return task

    def initial_messages(self, task: dict) -> list[dict]:
        first = f"I'm thinking of a number from {task['low']} to {task['high']}. You have {self.max_turns} turns."
        return [system(SYSTEM_PROMPT), user(first)]

    def respond(self, episode, action: str) -> Reply:
        guess, problem = parse_guess(action, episode.task)
        left = episode.max_turns - episode.turn
        if guess is None:
            return Reply([user(f"I could not read a guess: {problem}. Answer with <guess>NUMBER</guess>. {left} turns left.")])
        secret = episode.task["secret"]
        if guess == secret:
            return Reply([user(f"Correct! It was {secret}; you found it in {episode.turn} turns.")], done=True)
        hint = "Higher" if guess < secret else "Lower"
        return Reply([user(f"{hint} than {guess}. {left} turns left.")])

    def reference_action(self, episode) -> str:
        """Binary search over the range the answers so far leave open."""
        low, high = episode.task["low"], episode.task["high"]
        for guess in guesses(episode):
            if guess is not None and guess < episode.task["secret"]:
                low = max(low, guess + 1)
            elif guess is not None and guess > episode.task["secret"]:
                high = min(high, guess - 1)
        return f"<guess>{(low + high) // 2}</guess>"


def make_env(**kwargs) -> GuessNumber:
    return GuessNumber(**kwargs)
