"""An environment's `dependencies` are checked wherever it loads: a missing or wrong-version
requirement is named with the pip command that installs it, not met as `No module named ...`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import envhub
from envhub.authoring import validate
from envhub.errors import EnvhubError, MissingDependencyError

ECHO = Path(__file__).resolve().parents[1] / "fixtures" / "echo"
ABSENT = "envhub-test-absent-package==1.0"


def _echo_with(tmp_path: Path, dependencies: list[str]) -> Path:
    folder = tmp_path / "echo"
    shutil.copytree(ECHO, folder)
    manifest = folder / "envhub.toml"
    deps = ", ".join(f'"{d}"' for d in dependencies)
    manifest.write_text(manifest.read_text().replace("max_turns = 10000\n", f"max_turns = 10000\ndependencies = [{deps}]\n"))
    return folder


def test_missing_and_wrong_version_are_named_with_the_pip_command(tmp_path):
    folder = _echo_with(tmp_path, [ABSENT, "pydantic<2", "numpy>=1.24"])
    with pytest.raises(MissingDependencyError) as caught:
        envhub.make(folder)
    error = caught.value
    import pydantic

    assert error.missing == ["`envhub-test-absent-package==1.0` (not installed)", f"`pydantic<2` ({pydantic.VERSION} is installed)"]
    assert "tests/echo@1.0.0" in str(error) and "No module named" not in str(error)
    assert error.hint == "install its dependencies with `pip install envhub-test-absent-package==1.0 'pydantic<2'`, then load it again"


def test_satisfied_dependencies_load(tmp_path):
    env = envhub.make(_echo_with(tmp_path, ["numpy>=1.24", "Pydantic>=2"]))  # names compare normalised
    env.reset(seed=0)


def test_validate_reports_the_missing_requirement(tmp_path):
    report = validate(_echo_with(tmp_path, [ABSENT]))
    assert not report.ok
    (failure,) = report.failures
    assert failure.startswith("entrypoint:") and ABSENT in failure and "check `entrypoint`" not in failure


def test_the_process_runtime_names_it_too(tmp_path):
    with pytest.raises(EnvhubError) as caught:
        envhub.make(_echo_with(tmp_path, [ABSENT]), runtime="process")
    assert ABSENT in str(caught.value) and "pip install" in str(caught.value) + str(caught.value.hint)
