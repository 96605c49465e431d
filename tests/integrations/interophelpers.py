"""Policies shared by the integration tests (imported by name: the tests folders are not packages)."""

from __future__ import annotations

import re


def bisect(messages, *, unreadable_turn: int | None = None) -> str:
    """Guess-number by bisection over the answers so far; turn ``unreadable_turn`` (1-based) holds
    no guess, a turn the rubric's format criterion marks down."""
    low, high = map(int, re.search(r"from (\d+) to (\d+)", messages[1]["content"]).groups())
    asked = [m["content"] for m in messages if m["role"] == "assistant"]
    if len(asked) + 1 == unreadable_turn:
        return "hmm, maybe the middle?"
    for said, answer in zip(asked, [m["content"] for m in messages if m["role"] == "user"][1:]):
        found = re.search(r"<guess>(\d+)</guess>", said)
        if found and answer.startswith("Higher"):
            low = int(found.group(1)) + 1
        elif found and answer.startswith("Lower"):
            high = int(found.group(1)) - 1
    return f"<guess>{(low + high) // 2}</guess>"
