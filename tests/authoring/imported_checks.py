"""What every imported folder must pass, whatever its kind: shared by each kind's import tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gymnasium import Env
from gymnasium.utils.env_checker import check_env

import envhub
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


def assert_the_readme_says(folder: Path, *expected: str) -> None:
    readme = (folder / "README.md").read_text()
    for text in expected:
        assert text in readme, text


def assert_the_process_runtime_plays_it_alike(folder: Path, episodes: Callable[[Env], object]) -> None:
    """The folder's environment in the process runtime (a child server) and in-process: ``episodes``
    of one equal those of the other, and the remote one keeps gymnasium's Env contract."""
    local = envhub.make(folder)
    remote = envhub.make(folder, runtime="process")
    assert episodes(remote) == episodes(local)
    check_env(remote, skip_render_check=True)
    remote.close()
    local.close()
