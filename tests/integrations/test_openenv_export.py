"""`envhub export openenv`: a package that OpenEnv's own validation accepts, and whose entry point
serves OpenEnv's protocol (checked by OpenEnv's runtime graders on OpenEnv's evidence collector)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from loopback import serve
from typer.testing import CliRunner

import envhub
from envhub.cli import build_app
from envhub.identity.artifact import folder_digest

pytest.importorskip("openenv.validation", reason="OpenEnv's validation: pip install 'envhub[interop]'")
from openenv.cli._cli_utils import validate_env_structure  # noqa: E402
from openenv.core import GenericEnvClient  # noqa: E402
from openenv.validation import Level, Verdict, run_validation  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = sorted(p.name for p in (ROOT / "environments").iterdir() if (p / "envhub.toml").is_file())


def export(env: str, out: Path, *extra: str):
    return CliRunner().invoke(build_app(), ["export", "openenv", env, str(out), *extra])


@pytest.mark.parametrize("name", BUNDLED)
def test_openenv_validation_accepts_every_bundled_export(tmp_path, name):
    out = tmp_path / f"{name}-openenv"
    result = export(name, out)
    assert result.exit_code == 0, result.output
    report = run_validation(out, max_level=Level.STATIC)
    assert report.verdict is Verdict.PASS, [(r.check_id, r.status, r.evidence) for r in report.results]
    manifest = report.manifest
    located = envhub.locate(name)
    assert manifest.name == name and manifest.version == located.manifest.version
    assert manifest.task_distribution.dataset_version == located.digest == folder_digest(out / "env")
    assert manifest.resources.memory_mb == located.manifest.limits.memory_mb
    assert manifest.capabilities.llm_judged is located.manifest.rubric.judge
    assert (manifest.judge is not None) is located.manifest.rubric.judge
    assert manifest.network.mode == ("public" if located.manifest.rubric.judge else "no-network")
    assert validate_env_structure(out) == []  # what `openenv push` checks before it uploads


def test_openenv_cli_validates_the_export(tmp_path):
    out = tmp_path / "pkg"
    assert export("guess-number", out).exit_code == 0
    cli = [sys.executable, "-c", "from openenv.cli.__main__ import main; main()"]
    checked = subprocess.run([*cli, "validate", str(out), "--level", "static", "--json"], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert '"verdict": "pass"' in checked.stdout


def test_export_refuses_to_overwrite_without_asking(tmp_path):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    refused = subprocess.run([sys.executable, "-m", "envhub", "export", "openenv", "arithmetic", str(out)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "not empty" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (out / "mine.txt").read_text() == "keep me"
    assert export("arithmetic", out, "--overwrite").exit_code == 0
    assert not (out / "mine.txt").exists() and (out / "openenv.yaml").is_file()


def exported_server(package: Path):
    """The package's own entry point (`python server/app.py`), as the image's CMD runs the server."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # envhub from vendor/, as in the image
    return serve([sys.executable, str(package / "server" / "app.py")], cwd=package, env=env)


@pytest.mark.parametrize("name", ["guess-number", "calculator-tools"])
def test_openenv_runtime_graders_pass_on_the_exported_entry_point(tmp_path, name):
    # OpenEnv's `--level runtime` builds the Dockerfile first, which needs a package index; here the
    # same entry point runs as a process, and OpenEnv's collector and graders check what it serves.
    from openenv.validation.graders import Subject
    from openenv.validation.graders.runtime import ObservationSchemaGrader, RewardWellFormedGrader, StateContractGrader
    from openenv.validation.parsers.openenv_yaml import OpenEnvYamlParser
    from openenv.validation.runtime.collector import collect_runtime_evidence
    from openenv.validation.runtime.contracts import load_runtime_plan
    from openenv.validation.types import CheckStatus

    out = tmp_path / "pkg"
    assert export(name, out).exit_code == 0
    manifest = OpenEnvYamlParser().parse(out)
    plan = load_runtime_plan(out, manifest.execution)
    with exported_server(out) as url:
        evidence = collect_runtime_evidence(url, plan, episode_timeout_s=manifest.resources.episode_timeout_s)
        assert evidence.failure_reason is None
        subject = Subject(root=out, manifest=manifest, image_ref=None, running=None, outputs_dir=out / "outputs",
                          runtime_evidence=evidence)
        for grader in (RewardWellFormedGrader(), ObservationSchemaGrader(), StateContractGrader()):
            result = grader.run(subject)
            assert result.status is CheckStatus.PASS, (grader.check_id, result.evidence)
        assert sum(row.operation == "step" for row in evidence.exchanges) == envhub.locate(name).manifest.max_turns
        # The same episode as in this process, through OpenEnv's client.
        local = envhub.make(name)
        local.reset(seed=9)
        with GenericEnvClient(base_url=url).sync() as remote:
            remote.reset(seed=9)
            while True:
                action = local.unwrapped.reference_action(local.unwrapped.episode)
                _, reward, terminated, truncated, info = local.step(action)
                result = remote.step({"message": action})
                assert result.reward == reward and result.done == (terminated or truncated)
                if result.done:
                    assert result.metadata["rubric"]["total"] == info["rubric"]["total"]
                    break
