"""What every imported folder must pass, whatever its kind: shared by each kind's import tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from envhub.authoring import validate
from envhub.authoring.audit import audit


def assert_validates_and_passes_the_audit(folder: Path, *, tasks: int) -> None:
    report = validate(folder)
    assert report.ok, report.failures
    result = audit(str(folder), tasks=tasks)
    assert result.passed, result.failures


def assert_its_own_tests_pass(folder: Path, *, timeout_s: float = 600) -> None:
    """The tests the import wrote into the folder, run as its author would (a fresh pytest)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "tests")],
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
