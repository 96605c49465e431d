"""``envhub init NAME``: a working environment folder to start from.

The scaffold is a small complete task (reverse a word) so that ``envhub validate`` passes on it as
generated; the author replaces the tasks, the messages, ``respond`` and the rubric.
"""

from __future__ import annotations

from pathlib import Path

from envhub.errors import EnvhubError, InvalidEnvIdError
from envhub.identity.ids import NAME_RE

MANIFEST = """\
namespace = "{namespace}"
name = "{name}"
version = "0.1.0"
description = "Reverse a word. (Describe your task here.)"
entrypoint = "{module}:make_env"
license = "Apache-2.0"
tags = ["example"]
max_turns = 1
dependencies = []

[dataset]
kind = "generated"
splits = ["train", "test"]

[rubric]
summary = "correct: the reversed word (0.9); format: one <answer> tag (0.1)"

[generation]
stop = ["</answer>"]   # a reply ends with its answer tag: nothing after it to score or pay for

[limits]
memory_mb = 256
step_timeout_s = 10
"""

MODULE = '''\
"""{name}: reverse a word. Replace the tasks, messages, respond() and rubric with your own."""

from __future__ import annotations

import re

from envhub import ChatEnv, Reply, Rubric, Score, criterion, system, user

WORDS = ["envhub", "gradient", "reward", "policy", "rollout", "adapter", "rubric", "episode", "token", "sample"]
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)


@criterion(weight=0.9)
def correct(episode) -> Score:
    """The answer is the word reversed."""
    found = ANSWER.findall(episode.completion)
    expected = episode.task["word"][::-1]
    if not found:
        return Score(0.0, "no <answer> tag")
    return Score(float(found[-1].strip() == expected), f"expected {{expected}}")


@criterion(weight=0.1)
def answer_format(episode) -> Score:
    """Exactly one answer tag."""
    return Score(float(len(ANSWER.findall(episode.completion)) == 1))


class {cls}(ChatEnv):
    max_turns = 1
    rubric = Rubric([correct, answer_format])

    def tasks(self, split: str) -> list[dict]:
        # Every third word is held out for testing; the splits never overlap.
        words = [w for i, w in enumerate(WORDS) if (i % 3 == 0) == (split == "test")]
        return [{{"id": w, "word": w}} for w in words]

    def initial_messages(self, task: dict) -> list[dict]:
        return [
            system("Reverse the word. Answer inside <answer></answer> tags."),
            user(f"Reverse: {{task['word']}}"),
        ]

    def respond(self, episode, action: str) -> Reply:
        # Single turn: end the episode. A multi-turn environment answers with
        # Reply(messages=[user("...")]) and ends with Reply(done=True).
        return Reply(done=True)

    def reference_action(self, episode) -> str:
        return f"<answer>{{episode.task['word'][::-1]}}</answer>"


def make_env(**kwargs) -> {cls}:
    return {cls}(**kwargs)
'''

def contract_tests(own_tests: str, *, docstring: str = "", audited: bool = False) -> str:
    """The tests file of a new environment folder: it passes ``validate`` and gymnasium's ``check_env``
    (and, ``audited``, the reward-hacking audit), then the folder's ``own_tests``. Shared by
    ``envhub init`` and ``envhub import``."""
    head = f'"""{docstring}"""\n\n' if docstring else ""
    pytest_import = "import pytest\n" if "pytest." in own_tests else ""
    audit_import = "from envhub.authoring.audit import audit\n" if audited else ""
    audit_test = AUDIT_TEST if audited else ""
    return f"""{head}from pathlib import Path

{pytest_import}from gymnasium.utils.env_checker import check_env

import envhub
from envhub.authoring import validate
{audit_import}
FOLDER = Path(__file__).resolve().parents[1]


def test_passes_validation():
    report = validate(FOLDER)
    assert report.ok, report.failures


def test_check_env():
    check_env(envhub.make(FOLDER), skip_render_check=True)
{audit_test}""" + own_tests


AUDIT_TEST = """

def test_passes_the_reward_hacking_audit():
    report = audit(str(FOLDER), tasks=4)
    assert report.passed, report.failures
"""

TEST = contract_tests(
    """

def test_reference_answer_scores_full():
    env = envhub.make(FOLDER)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(env.reference_action(env.episode))
    assert terminated and reward == 1.0
"""
)

README = """\
# {name}

Reverse a word. Replace this with a description of your task: what the model sees, the answer
format it must use, how the environment answers, and what the rubric rewards.

- Turns: 1
- Splits: train, test (disjoint)
- Rubric: `correct` (0.9), `answer_format` (0.1)

```bash
envhub validate .
envhub play .
envhub pack .
envhub publish .
```
"""


def scaffold(name: str, *, parent: str | Path = ".", namespace: str = "local") -> Path:
    """Write a new environment folder ``parent/name``; refuses to overwrite anything."""
    for label, value in (("name", name), ("namespace", namespace)):
        if not NAME_RE.match(value):
            raise InvalidEnvIdError(value, f"the {label} must use lowercase letters, digits, '.', '_' and '-'")
    folder = Path(parent) / name
    if folder.exists():
        raise EnvhubError(f"{folder} already exists", hint="choose another name, or remove the folder first")
    module = name.replace("-", "_").replace(".", "_") + "_env"
    cls = "".join(part.capitalize() for part in module.split("_")[:-1])
    if not module[0].isalpha():  # `2048` must still give an importable module and a class name
        module, cls = f"env_{module}", f"Env{cls}"
    files = {
        "envhub.toml": MANIFEST.format(namespace=namespace, name=name, module=module),
        f"{module}.py": MODULE.format(name=name, cls=cls),
        f"tests/test_{module}.py": TEST,
        "README.md": README.format(name=name),
    }
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder
