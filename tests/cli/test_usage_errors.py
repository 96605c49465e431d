"""Usage mistakes are known errors: one line, the nearest names as the next step, exit code 1."""

import subprocess
import sys

import pytest


def envhub(*args):
    return subprocess.run([sys.executable, "-m", "envhub", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "error", "hint"),
    [
        (["list", "--registy", "x"], "No such option: --registy", "did you mean `--registry`?"),
        (["lisst"], "No such command 'lisst'", "did you mean `list`"),
        (["pack", "grnt", "a/b", "lab"], "No such command 'grnt'", "did you mean `grant`?"),
        (["pull"], "Missing argument", "pull --help` lists every option"),
    ],
)
def test_usage_mistakes_exit_1_with_the_next_step(args, error, hint):
    result = envhub(*args)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: ") and error in lines[0]
    assert lines[1].startswith("next: ") and hint in lines[1]
