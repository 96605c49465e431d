"""`envhub import reasoning-gym`, against the real reasoning-gym package (the `import` extra's pin):
the folder it writes validates, passes the audit and plays alike in every runtime; its splits never
share a problem; its rubric is reasoning-gym's own scorer without the credit for hedging; bad
sources, options and scorers give clear errors."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from gymnasium.utils.env_checker import check_env

import envhub
from envhub.authoring import validate
from envhub.authoring.audit import audit
from envhub.authoring.importers import import_environment
from envhub.authoring.importers.common import installed_source
from envhub.authoring.importers.reasoning_gym_runtime import HELD_OUT_FILE, INSTRUCTIONS, ReasoningGymEnv, question_digest
from envhub.errors import (CriterionError, EnvironmentFailure, ImageBuildError, ImportSourceError, InvalidOptionError,
                           MissingDependencyError)  # fmt: skip

from imported_checks import assert_its_own_tests_pass, assert_the_readme_says

pytest.importorskip("reasoning_gym", reason="the `import` extra (pip install 'envhub[import]') is not installed")

TASKS = "basic_arithmetic,letter_counting,word_sorting"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("import") / "rg"
    import_environment(
        "reasoning-gym", "reasoning-gym==0.1.25", output=out, name="acme/rg-mix",
        options={"tasks": TASKS, "task_config": ["letter_counting.max_words=6", "basic_arithmetic.max_terms=3"], "test_size": "40"},
    )  # fmt: skip
    return out


def test_the_folder_pins_the_source_and_says_what_it_is(folder):
    manifest = envhub.load_manifest(folder)
    assert manifest.ref == "acme/rg-mix@0.1.0" and manifest.dependencies == ["reasoning-gym==0.1.25"]
    assert manifest.max_turns == 1 and "reasoning-gym" in manifest.tags and manifest.license == "Apache-2.0"
    module = (folder / "rg_mix_env.py").read_text()
    assert "from envhub.authoring.importers.reasoning_gym_runtime import ReasoningGymEnv" in module
    assert len(module.splitlines()) < 40  # thin: the adapter is the SDK's, not copied here
    assert_the_readme_says(folder, "reasoning-gym 0.1.25", "envhub import reasoning-gym reasoning-gym==0.1.25",
                           "--task-config letter_counting.max_words=6", "score_answer", "`letter_counting`: max_words=6",
                           "held_out.json", "`--prompt few-shot --shots 2`")  # fmt: skip
    held_out = json.loads((folder / HELD_OUT_FILE).read_text())["tasks"]
    assert sorted(held_out) == sorted(TASKS.split(",")) and all(0 < len(v["digests"]) <= 40 for v in held_out.values())
    assert held_out["letter_counting"]["config"] == {"max_words": 6} and held_out["word_sorting"]["test_size"] == 40


def test_validate_and_audit_pass(folder):
    report = validate(folder)
    assert report.ok, report.failures
    result = audit(str(folder), tasks=6)
    assert result.passed, result.failures
    assert result.reference is not None and result.reference.mean == 1.0
    shotgun = next(p for p in result.probes if p.probe == "shotgun")
    assert shotgun.max == 0.0  # many tagged answers earn nothing


def test_the_folders_own_tests_pass(folder):
    assert_its_own_tests_pass(folder)


def test_splits_never_share_a_problem_and_difficulty_passes_through(folder):
    env = envhub.make(folder)
    held_out = {d for task in json.loads((folder / HELD_OUT_FILE).read_text())["tasks"].values() for d in task["digests"]}
    train, test = set(), set()
    for seed in range(150):
        for split, seen in (("train", train), ("test", test)):
            obs, info = env.reset(seed=seed, options={"split": split})
            seen.add(obs[-1]["content"])
            if split == "train":
                assert question_digest(obs[-1]["content"]) not in held_out
            if env.episode.task["task"] == "letter_counting":
                assert env.episode.task["entry"]["metadata"]["span_length"] <= 6  # --task-config reached reasoning-gym
    assert train and test and not train & test
    obs, info = env.reset(options={"split": "test", "task_id": "word_sorting/3"})
    assert info["task_id"] == "word_sorting/3" and env.episode.task["index"] == 3
    # other settings than the import's (here a smaller test split) hold out their own test problems
    other = envhub.make(folder, test_size=5)
    test = {other.reset(seed=s, options={"split": "test"})[0][-1]["content"] for s in range(40)}
    train = {other.reset(seed=s, options={"split": "train"})[0][-1]["content"] for s in range(300)}
    assert len(test) <= 15 and not test & train


def test_the_few_shot_prompt_solves_train_problems_of_the_same_task_first(folder):
    env = envhub.make(folder)
    held_out = {task: set(v["digests"]) for task, v in json.loads((folder / HELD_OUT_FILE).read_text())["tasks"].items()}
    for seed in range(12):
        obs, _ = env.reset(seed=seed, options={"split": "test"})
        task = env.episode.task["task"]
        assert [m["role"] for m in obs] == ["user", "assistant", "user", "assistant", "user"]
        examples = env.examples(task)
        assert len(examples) == 2 and examples[0]["index"] != examples[1]["index"]
        for example, (asked, replied) in zip(examples, [obs[0:2], obs[2:4]]):
            assert example["task"] == task and question_digest(example["question"]) not in held_out[task]
            assert asked["content"].endswith(example["question"])
            answer = example["entry"]["answer"]
            assert replied["content"] == f"The answer is {answer}. <answer>{answer}</answer>"
            assert env.dataset(task, "train").score_answer(answer, example["entry"]) == 1.0  # solved right
        assert obs[0]["content"].startswith(INSTRUCTIONS) and obs[4]["content"] == env.episode.task["question"]
    assert len(envhub.make(folder, shots=1).reset(seed=0)[0]) == 3
    # folders imported before the option play as they did: the instructions in a system message
    obs, _ = envhub.make(folder, prompt="system").reset(seed=0, options={"split": "test"})
    assert [m["role"] for m in obs] == ["system", "user"]
    with pytest.raises(InvalidOptionError, match="'one-shot' is not one of few-shot, system"):
        envhub.make(folder, prompt="one-shot")
    with pytest.raises(InvalidOptionError, match="shots.*must be an int >= 1, got 0"):
        envhub.make(folder, shots=0)


def _play(env, answer_of, seed=3, task=None):
    options = {"split": "test", **({"task_id": task} if task else {})}
    env.reset(seed=seed, options=options)
    entry = env.episode.task["entry"]
    _, reward, terminated, _, info = env.step(answer_of(entry))
    assert terminated
    return reward, {name: c["score"] for name, c in info["rubric"]["criteria"].items()}, info["rubric"]["criteria"]


def test_the_rubric_is_the_sources_scorer_without_credit_for_hedging(folder):
    env = envhub.make(folder)
    arithmetic = "basic_arithmetic/1"
    assert _play(env, lambda e: f"Thinking... <answer>{e['answer']}</answer>", task=arithmetic)[0] == 1.0
    assert _play(env, lambda e: f"<answer>{e['answer']}</answer> <answer>0</answer>", task=arithmetic)[0] == 0.0
    assert _play(env, lambda e: e["answer"], task=arithmetic)[0] == 0.0  # no tag: nowhere to read the answer
    # reasoning-gym's default scorer pays len(expected)/len(answer) for an answer that contains the expected one
    dataset = env.dataset("basic_arithmetic", "test")
    entry = dataset[1]
    assert 0 < dataset.score_answer(f"{entry['answer']} 7", entry) < 1
    reward, scores, criteria = _play(env, lambda e: f"<answer>{e['answer']} 7</answer>", task=arithmetic)
    assert scores == {"correct": 0.0, "answer_format": 1.0} and reward == pytest.approx(0.1)
    assert "no credit for hedging" in criteria["correct"]["reason"]
    long_list = " ".join(str(v) for v in range(40))
    reward, scores, criteria = _play(env, lambda e: f"<answer>{long_list} {e['answer']}</answer>", task=arithmetic)
    assert scores["correct"] == 0.0 and "not a list of candidates" in criteria["correct"]["reason"]
    # a task's own partial credit is kept: word_sorting pays 0.2 for the right words in the wrong order
    reward, scores, _ = _play(env, lambda e: "<answer>" + ", ".join(e["metadata"]["sorted_words"][::-1]) + "</answer>", task="word_sorting/2")
    assert scores["correct"] == pytest.approx(0.2) and reward == pytest.approx(0.9 * 0.2 + 0.1)


def test_one_episode_per_runtime_equals_inprocess(folder):
    local = envhub.make(folder)
    remote = envhub.make(folder, runtime="process")
    for seed in range(3):
        for split in ("train", "test"):
            assert remote.reset(seed=seed, options={"split": split}) == local.reset(seed=seed, options={"split": split})
            answer = local.reference_action(local.episode) or "<answer>0</answer>"
            assert remote.step(answer) == local.step(answer)
    check_env(remote, skip_render_check=True)
    remote.close()


@pytest.mark.docker
def test_the_docker_runtime_cannot_build_it_and_says_why(folder, docker_engine):
    # reasoning-gym 0.1.25 needs cellpylib, pycosat and zss, which publish no binary wheel; images
    # install published wheels only (no sdist's build backend runs on the host), so the build refuses.
    with pytest.raises(ImageBuildError, match="no binary wheel") as caught:
        envhub.make(folder, runtime="docker")
    assert "reasoning-gym==0.1.25" in str(caught.value) and "cellpylib" in caught.value.log


def test_a_missing_or_wrong_source_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ImportSourceError, match=r"reasoning-gym 0.1.25 is installed, not ==0.1.20") as caught:
        import_environment("reasoning-gym", "reasoning-gym==0.1.20", output=tmp_path / "a", options={"tasks": "gcd"})
    assert "pip install 'reasoning-gym==0.1.20'" in caught.value.hint
    with pytest.raises(ImportSourceError, match="imports from the package `reasoning-gym`"):
        import_environment("reasoning-gym", "textarena", output=tmp_path / "a", options={"tasks": "gcd"})
    with pytest.raises(ImportSourceError, match="`envhub-absent-source` is not installed") as caught:
        installed_source("reasoning-gym", "envhub-absent-source", package="envhub-absent-source", module="x", supported="==1.0")
    assert "pip install" in caught.value.hint
    # a source that is installed but does not import, and one of a version the adapter is not written for
    site = tmp_path / "site"
    (site / "brokensource").mkdir(parents=True)
    (site / "brokensource" / "__init__.py").write_text("raise RuntimeError('half installed')\n")
    for dist, version in (("brokensource", "1.0"), ("reasoning_gym", "0.2.0")):
        info = site / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ImportSourceError, match=r"`import brokensource` fails: RuntimeError: half installed"):
        installed_source("reasoning-gym", "brokensource", package="brokensource", module="brokensource", supported=">=1")
    with pytest.raises(ImportSourceError, match=r"reasoning-gym 0.2.0 is installed; this importer is written for reasoning-gym==0.1.25"):
        import_environment("reasoning-gym", "reasoning-gym", output=tmp_path / "b", options={"tasks": "gcd"})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing is written on a refusal


def test_bad_tasks_and_options_are_named(tmp_path):
    def attempt(**options):
        with pytest.raises(ImportSourceError) as caught:
            import_environment("reasoning-gym", "reasoning-gym", output=tmp_path / "x", options=options)
        return caught.value

    assert "Did you mean `letter_counting`" in str(attempt(tasks="leter_counting"))
    error = attempt(tasks="letter_counting", task_config=["letter_counting.max_word=3"])
    assert "Did you mean `max_words`" in str(error) and "min_words" in error.hint
    assert "not one of --tasks" in str(attempt(tasks="gcd", task_config=["lcm.max_value=3"]))
    assert "reasoning-gym refuses it" in str(attempt(tasks="letter_counting", task_config=["letter_counting.min_words=-4"]))
    assert "Did you mean `--tasks`" in str(attempt(taks="gcd"))
    assert "`--tasks` is required" in str(attempt())
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    assert "not an empty folder" in str(attempt(tasks="gcd"))


def test_a_task_whose_scorer_or_generator_raises_is_an_error_not_a_score():
    import reasoning_gym
    from reasoning_gym.dataset import ProceduralDataset

    @dataclasses.dataclass
    class Config:
        seed: int | None = None
        size: int = 10

    class Raising(ProceduralDataset):
        """A real reasoning-gym dataset whose scorer raises, registered as reasoning-gym's own are."""

        def __init__(self, config):
            super().__init__(config=config, seed=config.seed, size=config.size)

        def __getitem__(self, idx):
            number = random.Random(self.seed + idx).randint(0, 10**6)
            return {"question": f"Repeat {number}.", "answer": str(number), "metadata": {}}

        def score_answer(self, answer, entry):
            raise KeyError("the scorer's own bug")

    class BrokenGenerator(Raising):
        def __getitem__(self, idx):
            raise ValueError("cannot generate")

    for name, cls in (("envhub_test_raising_scorer", Raising), ("envhub_test_broken_generator", BrokenGenerator)):
        if name not in reasoning_gym.factory.DATASETS:
            reasoning_gym.register_dataset(name, cls, Config)
    env = ReasoningGymEnv(tasks=["envhub_test_raising_scorer"], test_size=5)
    env.reset(seed=0, options={"split": "test"})
    with pytest.raises(CriterionError, match=r"criterion `correct`: raised KeyError: .the scorer's own bug"):
        env.step(env.reference_action(env.episode))
    env = ReasoningGymEnv(tasks=["envhub_test_broken_generator"], test_size=5)
    with pytest.raises(EnvironmentFailure, match=r"reasoning-gym envhub_test_broken_generator\[\d\] raised ValueError: cannot generate"):
        env.reset(seed=1, options={"split": "test"})


def test_a_missing_source_at_load_names_the_pip_command(folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    manifest = copy / "envhub.toml"
    manifest.write_text(manifest.read_text().replace("reasoning-gym==0.1.25", "reasoning-gym==0.1.99"))
    with pytest.raises(MissingDependencyError, match=r"needs `reasoning-gym==0.1.99` \(0.1.25 is installed\)") as caught:
        envhub.make(copy)
    assert "pip install reasoning-gym==0.1.99" in caught.value.hint


def test_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from envhub.cli import build_app

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(build_app(), ["import", "reasoning-gym", "reasoning-gym", "--tasks", "gcd,lcm", "--test-size=20",
                                         "--task-config", "gcd.max_value=500", "--name", "acme/numbers", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert envhub.load_manifest(out).ref == "acme/numbers@0.1.0"
    assert "'config': {'gcd': {'max_value': 500}}" in (out / "numbers_env.py").read_text()
    done = subprocess.run([sys.executable, "-m", "envhub", "import", "reasoning-gym", "reasoning-gym", "--tasks", "gcd",
                           "--test-sise", "3", "-o", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Did you mean `--test-size`" in done.stderr and "next:" in done.stderr
