"""`envhub import harbor`, on Harbor task folders (tests/fixtures/harbor: a dataset of two tasks;
tests/fixtures/harbor_bad: tests that hang, write no reward or write a word) with real containers:
images built offline from envhub's base image, the model's commands and the task's tests run in
the task's container with no network, the tests' reward file as the rubric's score, and bad tests
giving unscored, reported episodes, never a made-up reward."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import envhub
from envhub.authoring.importers import import_environment
from envhub.errors import ImportSourceError, InvalidOptionError

from imported_checks import assert_the_readme_says, assert_validates_and_passes_the_audit

pytestmark = pytest.mark.docker

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DATASET = FIXTURES / "harbor"
BAD = FIXTURES / "harbor_bad"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, docker_engine) -> Path:
    out = tmp_path_factory.mktemp("import") / "dataset"
    import_environment("harbor", str(DATASET), output=out, name="acme/harbor-demo", options={"max_turns": "4"})
    return out


def episode(env, actions, task_id, *, split="train"):
    obs, _ = env.reset(options={"task_id": task_id, "split": split})
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return obs, reward, info
    raise AssertionError("the episode did not end")


def test_the_folder_holds_the_tasks_pinned_by_digest(folder):
    manifest = envhub.load_manifest(folder)
    assert manifest.ref == "acme/harbor-demo@0.1.0" and manifest.dependencies == [] and manifest.license == "NOASSERTION"
    assert manifest.limits.step_timeout_s >= 30 + 120
    for task in ("hello-file", "sum-numbers"):
        for rel in ("instruction.md", "task.toml", "tests/test.sh", "environment/Dockerfile", "solution/solve.sh"):
            assert (folder / "tasks" / task / rel).read_bytes() == (DATASET / task / rel).read_bytes()
    module = (folder / "harbor_demo_env.py").read_text()
    assert "'digests': {" in module and "'hello-file': 'sha256:" in module
    assert_the_readme_says(folder, "| `hello-file` |", "bash /tests/test.sh", "never a made-up reward", "no network")


def test_validate_and_audit(folder, docker_engine):
    """(The folder's own tests run the same checks plus the reference: left to its author, they take minutes here.)"""
    assert_validates_and_passes_the_audit(folder, tasks=2)
    assert not docker_engine.containers.list(all=True, filters={"label": "org.envhub.harbor-task"})  # none left behind


def test_commands_run_in_the_tasks_container_and_its_tests_score_the_result(folder):
    env = envhub.make(folder)
    obs, reward, info = episode(env, ["```bash\necho hello > /app/greeting.txt\ncat /app/greeting.txt\n```", "Done."], "hello-file")
    assert obs[2]["content"].startswith("```bash") and "(exit code 0)\nhello" in obs[3]["content"]
    assert reward == 1.0 and info["rubric"]["criteria"]["harbor_tests"]["reason"].startswith("the task's tests wrote reward 1")
    obs, reward, info = episode(env, ["I cannot do that."], "hello-file")
    assert reward == 0.0 and info["rubric"]["criteria"]["harbor_tests"]["score"] == 0.0  # nothing done: the tests say 0
    # a shotgun of command blocks: the first few run, the model is told
    env.reset(options={"task_id": "hello-file"})
    obs, *_ = env.step("".join(f"```bash\necho {i}\n```" for i in range(6)))
    assert obs[-1]["content"].startswith("(only the first 4 of your 6 command blocks are run)")
    assert "\n3" in obs[-1]["content"] and "echo 4" not in obs[-1]["content"]
    # reward.json with partial credit (sum-numbers: 45, and 50 is off by less than 10)
    _, reward, _ = episode(env, ["```bash\necho 50 > /app/sum.txt\n```", "done"], "sum-numbers")
    assert reward == 0.5
    # a reward the model plants in /logs/verifier is emptied before the tests run
    planted = "```bash\nmkdir -p /logs/verifier && echo 1 > /logs/verifier/reward.txt && echo '{\"reward\": 1}' > /logs/verifier/reward.json\n```"
    _, reward, _ = episode(env, [planted, "done"], "hello-file")
    assert reward == 0.0
    env.close()


def test_the_container_is_isolated_and_removed(folder, docker_engine):
    env = envhub.make(folder)
    env.reset(options={"task_id": "hello-file"})
    container = env.unwrapped.episode.state["container"]
    host = container.attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 256 * 2**20 and host["PidsLimit"] == 256
    obs, *_ = env.step("```bash\npython3 -c \"import urllib.request; urllib.request.urlopen('http://1.1.1.1', timeout=3)\"\n```")
    assert "exit code 1" in obs[-1]["content"] and ("unreachable" in obs[-1]["content"] or "Errno" in obs[-1]["content"])
    env.step("done")
    assert not docker_engine.containers.list(all=True, filters={"id": container.id})
    env.close()


def test_one_episode_per_runtime_equals_inprocess(folder):
    def played(env):
        out = []
        for task in ("hello-file", "sum-numbers"):
            obs, reward, info = episode(env, ["```bash\nls /app\necho 45 > /app/sum.txt\n```", "done"], task)
            out.append(json.loads(json.dumps([obs, reward, info["rubric"]])))
        return out

    local = envhub.make(folder)
    remote = envhub.make(folder, runtime="process")
    assert played(remote) == played(local)
    remote.close()
    local.close()


def test_splits_and_a_changed_task_is_refused(tmp_path, docker_engine):
    out = tmp_path / "split"
    import_environment("harbor", str(DATASET), output=out, options={"test_tasks": "sum-numbers"})
    env = envhub.make(out)
    assert [t["id"] for t in env.unwrapped.tasks("train")] == ["hello-file"]
    assert [t["id"] for t in env.unwrapped.tasks("test")] == ["sum-numbers"]
    (out / "tasks" / "hello-file" / "tests" / "test.sh").write_text("#!/bin/bash\necho 1 > /logs/verifier/reward.txt\n")
    with pytest.raises(InvalidOptionError, match="the files of task hello-file changed since the import"):
        envhub.make(out)


def test_tests_that_hang_or_write_no_reward_give_unscored_reported_episodes(tmp_path, docker_engine):
    out = tmp_path / "bad"
    import_environment("harbor", str(BAD), output=out)
    env = envhub.make(out)
    reasons = {}
    for task in ("hangs", "no-reward", "not-a-number"):
        started = time.monotonic()
        _, reward, info = episode(env, ["done"], task)
        assert reward == 0.0 and info["rubric"]["unscored"] == ["harbor_tests"], task
        assert info["rubric"]["criteria"]["harbor_tests"]["score"] is None
        reasons[task] = (info["rubric"]["criteria"]["harbor_tests"]["reason"], time.monotonic() - started)
    assert "did not finish within their 3 s" in reasons["hangs"][0] and reasons["hangs"][1] < 30
    assert "wrote no reward file" in reasons["no-reward"][0] and "all tests passed (but no reward file)" in reasons["no-reward"][0]
    assert "'great', not a number" in reasons["not-a-number"][0]
    env.close()


def test_task_folders_that_are_incomplete_or_do_not_build_are_refused(tmp_path, docker_engine):
    def refused(source, **options):
        with pytest.raises(ImportSourceError) as caught:
            import_environment("harbor", str(source), output=tmp_path / "out", options=options)
        assert not (tmp_path / "out").exists()
        return caught.value

    broken = tmp_path / "broken"
    shutil.copytree(DATASET / "hello-file", broken)
    (broken / "tests" / "test.sh").unlink()
    assert "task broken: no tests/test.sh" in str(refused(broken))
    (broken / "tests" / "test.sh").write_text("echo 1 > /logs/verifier/reward.txt\n")
    (broken / "environment" / "Dockerfile").write_text("FROM envhub-test/no-such-base:1\n")
    error = refused(broken)
    assert "environment/ does not build offline" in str(error) and "base image must be on this machine" in error.hint
    assert "no task nope" in str(refused(DATASET, tasks="nope"))
    assert "--test-tasks names every task" in str(refused(DATASET, test_tasks="hello-file,sum-numbers"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no task.toml" in str(refused(empty))
    assert "is not a folder" in str(refused(tmp_path / "absent"))


def test_the_command_line(tmp_path, docker_engine):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "envhub", "import", "harbor", str(DATASET / "hello-file"), "-o", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "local/harbor-hello-file@0.1.0" in done.stderr and (out / "tasks" / "hello-file" / "task.toml").is_file()
