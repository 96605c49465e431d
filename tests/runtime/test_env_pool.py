"""EnvPool: the free list of environment instances that evaluation and the trainer share."""

from __future__ import annotations

import pytest

from envhub.authoring.scaffold import scaffold
from envhub.errors import EnvNotFoundError
from envhub.runtime.env_pool import EnvPool

COUNTS_CLOSES = """

class Counted(Flip):
    closes = 0

    def close(self):
        self.closes += 1
        super().close()


def make_env(**kwargs):
    return Counted(**kwargs)
"""


@pytest.fixture
def counted(tmp_path):
    """A real environment folder whose instances count how often they are closed."""
    folder = scaffold("flip", parent=tmp_path)
    module = folder / "flip_env.py"
    module.write_text(module.read_text() + COUNTS_CLOSES)
    return folder


def test_instances_are_made_on_demand_and_reused(counted):
    pool = EnvPool(counted)
    a = pool.take()
    b = pool.take()  # a is lent: a second instance is made
    assert a is not b and pool.first is a
    pool.give(a)
    assert pool.take() is a  # idle again: reused, not made anew
    obs, _ = a.reset(seed=0)
    assert obs[-1]["content"].startswith("Reverse:")
    pool.close()
    assert (a.closes, b.closes) == (1, 1)


def test_a_discarded_instance_is_closed_and_never_lent_again(counted):
    pool = EnvPool(counted)
    broken = pool.take()
    pool.discard(broken)
    assert broken.closes == 1
    fresh = pool.take()
    assert fresh is not broken
    pool.give(fresh)
    pool.close()
    assert broken.closes == 1 and fresh.closes == 1  # close() does not close a discarded one twice


def test_factory_arguments_and_runtime_reach_make():
    pool = EnvPool("arithmetic", kwargs={"level": "hard"})
    env = pool.take()
    assert env.identity.ref.startswith("envhub/arithmetic@") and pool.runtime == "inprocess"
    easy = EnvPool("arithmetic", kwargs={"level": "easy"}).take()
    question = env.reset(seed=3)[0][-1]["content"]
    assert question != easy.reset(seed=3)[0][-1]["content"]  # the level changed the task
    pool.close()


def test_an_unknown_environment_fails_on_take_with_the_sdk_error():
    pool = EnvPool("arithmatic")
    with pytest.raises(EnvNotFoundError, match="Did you mean `arithmetic`"):
        pool.take()
    assert pool.first is None
