"""One benchmark job in a fresh interpreter: parallel jobs share no interpreter, threads or caches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_child(script: str, result_file: Path, flags: list[str], *, label: str) -> dict:
    """Run ``script --result-file RESULT_FILE *flags``, its output to RESULT_FILE's ``.log``, and
    return the JSON the job wrote there; a job that fails or writes nothing raises, naming its log."""
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    log = result_file.with_suffix(".log")
    with log.open("w") as handle:
        command = [sys.executable, script, "--result-file", str(result_file), *flags]
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0 or not result_file.is_file():
        raise RuntimeError(f"benchmark {label} failed (exit {code}); its output is in {log}")
    return json.loads(result_file.read_text())
