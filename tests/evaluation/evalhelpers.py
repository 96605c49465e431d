"""Helpers shared by the evaluation tests (imported by name: the tests folders are not packages)."""

from __future__ import annotations

import re
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def solve(messages) -> str:
    """A perfect arithmetic policy: reads the problem from the last user turn (its last question:
    the worked example before it asks one too)."""
    questions = re.findall(r"What is ([^?\n]*)\?", messages[-1]["content"])
    if not questions:
        return "no idea"
    assert re.fullmatch(r"[\d\s+\-*()]+", questions[-1])
    return f"<answer>{eval(questions[-1])}</answer>"
