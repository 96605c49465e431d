"""`envhub import verifiers`, against the real verifiers 0.4 in its own virtual environment
(`make verifiers`: .venv-verifiers), with environments written here with verifiers' own API. The
folder validates, passes the audit, plays alike in-process and in the process runtime, is scored by
the source's reward functions with their weights, trains one step, and a source that is missing, of
another version, that does not import or whose reward function raises gives a clear error or an
unscored criterion, never a made-up reward."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import envhub
from envhub.authoring.importers import import_environment
from envhub.authoring.importers.verifiers import installed_version, verifiers_python
from envhub.errors import ImportSourceError

from imported_checks import (
    assert_its_own_tests_pass,
    assert_the_process_runtime_plays_it_alike,
    assert_the_readme_says,
    assert_validates_and_passes_the_audit,
)

if installed_version(verifiers_python(), "verifiers") != "0.4.0":
    pytest.skip("verifiers 0.4 is not installed in its own interpreter (make verifiers)", allow_module_level=True)

# A verifiers 0.4 taskset: typed task data, a Task with two weighted @vf.reward functions, a Taskset.
ADD = '''
import verifiers.v1 as vf


class AddData(vf.TaskData):
    answer: str


class AddTask(vf.Task[AddData, vf.State, vf.TaskConfig]):
    @vf.reward(weight=0.75)
    async def correct(self, task: AddData, trace: vf.Trace) -> float:
        return float(trace.last_reply.strip() == task.answer)

    @vf.reward(weight=0.25)
    async def digits_only(self, trace: vf.Trace) -> float:
        return float(trace.last_reply.strip().isdigit())


class AddConfig(vf.TasksetConfig):
    size: int = 6


class AddTaskset(vf.Taskset[AddTask, AddConfig]):
    def load(self):
        for a in range(self.config.size):
            for b in range(5):
                yield AddTask(AddData(prompt=f"What is {a} + {b}? Reply with the number only.", answer=str(a + b),
                                      system_prompt="You add numbers."))


__all__ = ["AddTaskset"]
'''

# A reward function that raises on a reply that is not a number, and one that pays outside [0, 1].
FRAGILE = '''
import verifiers.v1 as vf


class Data(vf.TaskData):
    answer: int


class FragileTask(vf.Task[Data, vf.State, vf.TaskConfig]):
    @vf.reward(weight=1.0)
    async def correct(self, task: Data, trace: vf.Trace) -> float:
        return float(int(trace.last_reply) == task.answer)

    @vf.reward(weight=0.5)
    async def bonus(self, trace: vf.Trace) -> float:
        return 2.0 if trace.last_reply.startswith("4") else 0.0

    @vf.reward(weight=0.5)
    async def short(self, trace: vf.Trace) -> float:
        return float(len(trace.last_reply) < 6)


class FragileTaskset(vf.Taskset[FragileTask, vf.TasksetConfig]):
    def load(self):
        for n in range(4):
            yield FragileTask(Data(prompt=f"What is {n} + {n}?", answer=n + n))


__all__ = ["FragileTaskset"]
'''

# The older form, written for verifiers < 0.4: it does not load under 0.4 (SingleTurnEnv is gone) ...
OLD_API = '''
import verifiers as vf


def load_environment(**kwargs):
    return vf.SingleTurnEnv(dataset=[{"question": "1 + 1?", "answer": "2"}], rubric=vf.Rubric(funcs=[]))
'''

# ... and one that still loads: its own dataset and rubric, reward functions in the old signature.
OLD_LOADS = '''
from types import SimpleNamespace


def exact(completion, answer, **kwargs):
    return float(completion[-1]["content"].strip() == answer)


def polite(completion):
    return float("please" not in completion[-1]["content"].lower())


def load_environment(n=4):
    rows = [{"question": f"Spell {w} backwards.", "answer": w[::-1]} for w in ["stop", "level", "drawer", "parts", "gulp"][:n]]
    return SimpleNamespace(dataset=rows, system_prompt="Answer with the word only.",
                           rubric=SimpleNamespace(funcs=[exact, polite], weights=[0.8, 0.2]))
'''

BROKEN = '''
import verifiers.v1 as vf

raise RuntimeError("this taskset needs a GPU")
'''


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vf-sources")
    for name, text in {"vf_add": ADD, "vf_fragile": FRAGILE, "vf_old_api": OLD_API, "vf_old_loads": OLD_LOADS, "vf_broken": BROKEN}.items():
        write(folder, name, text)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory, sources) -> Path:
    out = tmp_path_factory.mktemp("import") / "add"
    import_environment("verifiers", str(sources / "vf_add.py"), output=out, options={"args": '{"size": 8}'})
    return out


def play(env, action, *, seed=0):
    obs, _ = env.reset(seed=seed)
    return obs, env.step(action(obs))


def sum_of(obs) -> str:
    a, b = obs[-1]["content"].removeprefix("What is ").split("?")[0].split(" + ")
    return str(int(a) + int(b))


def test_the_folder_pins_verifiers_its_interpreter_and_the_source(folder, sources):
    manifest = envhub.load_manifest(folder)
    assert manifest.dependencies == ["verifiers==0.4.0"] and manifest.runtime.python == verifiers_python()
    assert manifest.license == "MIT" and "verifiers" in manifest.tags and manifest.max_turns == 1
    assert (folder / "source" / "vf_add.py").read_text() == (sources / "vf_add.py").read_text()
    tasks = json.loads((folder / "tasks.json").read_text())
    assert len(tasks) == 40 and tasks[0]["messages"][0] == {"role": "system", "content": "You add numbers."}
    module = (folder / "verifiers_vf_add_env.py").read_text()
    assert "'rewards': [{'name': 'correct', 'weight': 0.75}, {'name': 'digits_only', 'weight': 0.25}]" in module
    assert "'source_digest': 'sha256:" in module and "'args': {'size': 8}" in module
    assert_the_readme_says(folder, "a verifiers 0.4 taskset", "`AddTaskset`", "`correct` (0.75)", "envhub import verifiers")


def test_validate_audit_and_the_folders_own_tests(folder):
    assert_validates_and_passes_the_audit(folder, tasks=4)
    assert_its_own_tests_pass(folder, timeout_s=900)


def test_scored_by_the_sources_reward_functions_with_their_weights(folder):
    env = envhub.make(folder)
    obs, (_, reward, terminated, truncated, info) = play(env, sum_of)
    assert obs[0] == {"role": "system", "content": "You add numbers."} and terminated and not truncated
    assert reward == 1.0 and info["rubric"]["criteria"]["correct"] == {"score": 1.0, "weight": 0.75, "reason": "verifiers `correct`: 1"}
    _, (_, reward, *_rest, info) = play(env, lambda obs: "99")  # a number, but not the sum
    assert reward == 0.25 and info["rubric"]["criteria"]["digits_only"]["score"] == 1.0
    _, (_, reward, *_rest) = play(env, lambda obs: "the sum is " + sum_of(obs))
    assert reward == 0.0
    env.close()


def test_one_episode_per_runtime_equals_inprocess(folder):
    def episodes(env):
        return [json.loads(json.dumps(play(env, sum_of if seed % 2 else (lambda obs: "7"), seed=seed))) for seed in range(4)]

    assert_the_process_runtime_plays_it_alike(folder, episodes)


def test_a_reward_function_that_raises_is_unscored_and_reported(tmp_path, sources):
    out = tmp_path / "fragile"
    import_environment("verifiers", str(sources / "vf_fragile.py"), output=out, options={"test_every": "2"})
    env = envhub.make(out)
    _, (_, reward, terminated, _, info) = play(env, lambda obs: "seven")
    rubric = info["rubric"]
    assert terminated and rubric["unscored"] == ["correct"] and rubric["criteria"]["correct"]["score"] is None
    assert "`correct` failed: ValueError: invalid literal for int()" in rubric["criteria"]["correct"]["reason"]
    assert rubric["criteria"]["short"]["score"] == 1.0 and reward == 0.5  # the others still score: bonus 0 and short 1, weighed alike
    _, (_, _, _, _, info) = play(env, lambda obs: "40000")
    assert info["rubric"]["unscored"] == ["bonus"] and "returned 2, outside envhub's [0, 1]" in info["rubric"]["criteria"]["bonus"]["reason"]
    env.close()


def test_the_older_load_environment_form_where_it_still_loads(tmp_path, sources):
    out = tmp_path / "old"
    result = import_environment("verifiers", str(sources / "vf_old_loads.py"), output=out, options={"args": '{"n": 5}'})
    assert "an older `load_environment(**kwargs)` package" in (out / "README.md").read_text()
    env = envhub.make(out)
    obs, (_, reward, *_rest, info) = play(env, lambda obs: obs[-1]["content"].split()[1][::-1])
    assert obs[0]["content"] == "Answer with the word only." and reward == 1.0
    assert {name: c["weight"] for name, c in info["rubric"]["criteria"].items()} == {"exact": 0.8, "polite": 0.2}
    _, (_, reward, *_rest) = play(env, lambda obs: "please no")
    assert reward == 0.0
    env.close()
    assert result.manifest.dependencies == ["verifiers==0.4.0"]


def test_sources_that_are_missing_of_another_version_or_do_not_import_are_refused(tmp_path, sources):
    cases = [
        (str(tmp_path / "nowhere.py"), {}, "does not exist"),
        ("no_such_verifiers_environment", {}, "no module `no_such_verifiers_environment`"),
        (str(sources / "vf_add.py"), {"verifiers": "0.3.1"}, "verifiers 0.4.0 is installed in"),
        (str(sources / "vf_broken.py"), {}, "`import vf_broken` fails: RuntimeError: this taskset needs a GPU"),
        (str(sources / "vf_old_api.py"), {}, "fails under verifiers 0.4.0: AttributeError"),
        (str(sources / "vf_add.py"), {"args": '{"size": "many"}'}, "AddTaskset({'size': 'many'}) fails"),
    ]
    for i, (source, options, expected) in enumerate(cases):
        with pytest.raises(ImportSourceError) as caught:
            import_environment("verifiers", source, output=tmp_path / f"out{i}", options=options)
        assert expected in str(caught.value), (source, str(caught.value))
        assert not (tmp_path / f"out{i}").exists()  # nothing written


def test_the_command_line(tmp_path, sources):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "envhub", "import", "verifiers", str(sources / "vf_add.py"), "--name", "acme/add",
                           "--test-every", "3", "-o", str(out)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "acme/add@0.1.0 from verifiers==0.4.0" in " ".join(done.stderr.split()) and "'test_every': 3" in (out / "add_env.py").read_text()
    broken = subprocess.run([sys.executable, "-m", "envhub", "import", "verifiers", str(sources / "vf_broken.py"), "-o",
                             str(tmp_path / "broken")], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert broken.returncode == 1 and "this taskset needs a GPU" in " ".join(broken.stderr.split()) and "Traceback" not in broken.stderr


@pytest.mark.slow
def test_one_training_step(folder, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from test_import_training import PEAK_LIMIT_MB, _train_one_step

    run = _train_one_step(folder, tmp_path / "run", 8)
    metrics = run["metrics"]
    assert metrics["step"] == 1 and metrics["episodes/errors"] == 0 and metrics["episodes/count"] == 4
    (environment,) = run["environments"]
    assert environment["ref"] == envhub.load_manifest(folder).ref and environment["rubric_hash"].startswith("sha256:")
    assert run["peak_mb"] < PEAK_LIMIT_MB, f"peak {run['peak_mb']:.0f} MB"
    print(f"verifiers: one step, peak {run['peak_mb']:.0f} MB")


def test_dependencies_are_checked_in_the_sources_interpreter(folder, tmp_path):
    """verifiers is not installed in envhub's interpreter: the check looks in [runtime] python, and names its pip."""
    import shutil

    from envhub.errors import MissingDependencyError

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    manifest = copy / "envhub.toml"
    manifest.write_text(manifest.read_text().replace('dependencies = ["verifiers==0.4.0"]', 'dependencies = ["verifiers==0.4.0", "verifiers==0.3.1"]'))
    with pytest.raises(MissingDependencyError) as caught:
        envhub.make(copy)
    message = str(caught.value) + (caught.value.hint or "")
    assert "`verifiers==0.3.1` (0.4.0 is installed)" in message and f"{verifiers_python()} -m pip install verifiers==0.3.1" in message
    assert "verifiers==0.4.0`" not in message  # met where it is installed, though not in envhub's own interpreter
