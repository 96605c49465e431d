"""Helpers shared by the evaluation tests (imported by name: the tests folders are not packages)."""

from __future__ import annotations

import re
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def solve(messages) -> str:
    """A perfect arithmetic policy: reads the problem from the last user turn."""
    match = re.search(r"What is (.*)\?", messages[-1]["content"])
    if not match:
        return "no idea"
    assert re.fullmatch(r"[\d\s+\-*()]+", match.group(1))
    return f"<answer>{eval(match.group(1))}</answer>"
