"""The Env contract on a small multi-turn environment written here, and on arithmetic."""

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envhub
from envhub import ChatEnv, Reply, Rubric, Score, criterion, system, tool, user
from envhub.errors import (
    CriterionError,
    EnvironmentFailure,
    EpisodeEndedError,
    InvalidActionError,
    InvalidOptionError,
    TaskNotFoundError,
)


@criterion
def said_stop(episode) -> Score:
    return Score(float(episode.completion.strip() == "stop"), "last message")


class Countdown(ChatEnv):
    """Multi-turn: the environment counts down from a random start; the model must say `stop` at 0."""

    max_turns = 4
    rubric = Rubric([said_stop])

    def tasks(self, split):
        return [{"id": f"{split}-{n}", "start": n} for n in (2, 3)]

    def initial_messages(self, task):
        return [system("Say stop at zero."), user(str(task["start"]))]

    def respond(self, episode, action):
        left = episode.task["start"] - episode.turn
        if action == "stop":
            return Reply(done=True)
        noise = int(episode.rng.integers(100))  # seeded: replays must see the same number
        return Reply(messages=[tool(f"{left} (noise {noise})", name="counter")], reward=0.01)


def run(env, seed, actions):
    obs, info = env.reset(seed=seed)
    trace = [obs]
    for action in actions:
        step = env.step(action)
        trace.append(step)
        if step[2] or step[3]:
            break
    return trace


def test_check_env_passes_on_multi_turn_env():
    check_env(Countdown(), skip_render_check=True)


def test_observation_is_whole_conversation_and_rubric_scores_at_end():
    env = Countdown()
    obs, info = env.reset(seed=0, options={"task_id": "train-2"})
    assert [m["role"] for m in obs] == ["system", "user"] and info["task_id"] == "train-2"
    obs, reward, terminated, truncated, info = env.step("wait")
    assert [m["role"] for m in obs] == ["system", "user", "assistant", "tool"]
    assert obs[-1]["name"] == "counter" and reward == pytest.approx(0.01)
    assert not terminated and not truncated and "rubric" not in info
    obs, reward, terminated, truncated, info = env.step("stop")
    assert terminated and not truncated
    assert reward == pytest.approx(1.0)
    assert info["rubric"]["criteria"]["said_stop"] == {"score": 1.0, "weight": 1.0, "reason": "last message"}
    assert info["rubric"]["hash"] == env.rubric.hash


def test_truncated_at_max_turns_and_still_scored():
    env = Countdown(max_turns=2)
    trace = run(env, 1, ["a", "b", "c"])
    assert len(trace) == 3
    _, reward, terminated, truncated, info = trace[-1]
    assert truncated and not terminated
    assert info["rubric"]["total"] == 0.0 and reward == pytest.approx(0.01)


def test_same_seed_and_actions_give_same_episode():
    env = Countdown()
    assert repr(run(env, 7, ["x", "y", "stop"])) == repr(run(env, 7, ["x", "y", "stop"]))
    different = [repr(run(env, s, ["x", "y"])) for s in range(6)]
    assert len(set(different)) > 1  # the seed matters


def test_step_after_end_before_reset_and_bad_actions_are_named():
    env = Countdown()
    with pytest.raises(EpisodeEndedError, match="before reset"):
        env.step("x")
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="expected str, got int"):
        env.step(3)
    env.step("stop")
    with pytest.raises(EpisodeEndedError, match="Countdown.*has ended"):
        env.step("again")


def test_bad_options_are_named():
    env = Countdown()
    with pytest.raises(InvalidOptionError, match="split"):
        env.reset(options={"split": "validation"})
    with pytest.raises(InvalidOptionError, match="colour"):
        env.reset(options={"colour": "red"})
    with pytest.raises(TaskNotFoundError, match="Did you mean `train-2`"):
        env.reset(options={"task_id": "train-22"})
    with pytest.raises(InvalidOptionError, match="max_turns"):
        Countdown(max_turns=0)


def test_environment_and_criterion_failures_are_named():
    class Broken(Countdown):
        def respond(self, episode, action):
            raise KeyError("oops")

    env = Broken()
    env.reset(seed=0)
    with pytest.raises(EnvironmentFailure, match="failed in respond: KeyError"):
        env.step("x")
    with pytest.raises(EpisodeEndedError):  # the episode is over after a failure
        env.step("x")

    class OutOfRange(Countdown):
        rubric = Rubric([criterion(lambda e: 1.5, name="generous")])

    env = OutOfRange()
    env.reset(seed=0)
    with pytest.raises(CriterionError, match=r"OutOfRange.*`generous`.*1.5, outside \[0, 1\]") as info:
        env.step("stop")
    assert info.value.criterion == "generous"


def test_render_ansi_and_spaces():
    env = Countdown(render_mode="ansi")
    obs, _ = env.reset(seed=0)
    assert "[system]" in env.render()
    assert env.observation_space.contains(obs)
    assert not env.observation_space.contains([{"role": "robot", "content": "x"}])
    assert env.action_space.contains("any text, ünïcode and\nnewlines")
    assert not env.action_space.contains(b"bytes")


def test_arithmetic_via_make_and_gymnasium_make():
    env = envhub.make("arithmetic", level="medium")
    check_env(env, skip_render_check=True)
    assert env.identity.ref == "envhub/arithmetic@1.3.0"
    assert env.identity.digest.startswith("sha256:")
    gym_env = gymnasium.make("envhub/arithmetic-v1", level="hard")
    obs, info = gym_env.reset(seed=5)
    assert obs[-1]["role"] == "user" and info["task_id"].startswith("hard-")
    gym_env.close()


def test_episode_rng_is_seeded_per_episode():
    env = Countdown()
    env.reset(seed=3)
    a = env.episode.rng.integers(1 << 30)
    env.reset(seed=3)
    assert env.episode.rng.integers(1 << 30) == a
    assert isinstance(env.episode.rng, np.random.Generator)


class Rewriter(Countdown):
    """Replaces the system message on `rewrite`; tries to edit it in place on `edit`."""

    def respond(self, episode, action):
        if action == "rewrite":
            episode.messages[0] = system("Rewritten.")
        if action == "edit":
            episode.messages[0]["content"] = "edited in place"
        return super().respond(episode, action)


def test_history_can_be_replaced_but_not_edited_in_place():
    env = Rewriter()
    env.reset(seed=0)
    obs, *_ = env.step("rewrite")
    assert obs[0] == system("Rewritten.") and obs[1]["role"] == "user" and obs[2] == {"role": "assistant", "content": "rewrite"}
    obs.append(user("the caller's list is its own"))
    with pytest.raises(TypeError, match="replace it instead"):
        obs[0]["content"] = "messages are read-only"
    obs[0] = system("replaced in the caller's list only")
    assert env.episode.messages[0]["content"] == "Rewritten." and len(env.episode.messages) == 4
    with pytest.raises(EnvironmentFailure, match="cannot be changed in place; replace it"):
        env.step("edit")
    assert env.episode.messages[0]["content"] == "Rewritten."  # nothing was lost


def test_the_delta_path_tells_appended_messages_and_rewrites():
    env = Rewriter()
    env.reset(seed=0)
    appended, reward, terminated, truncated, info = env.step_delta("go")
    assert [m["role"] for m in appended] == ["tool"] and env.episode.messages[-1] is appended[-1]
    assert env.step_delta("rewrite")[0] is None  # the history changed: the whole conversation is needed


def test_read_only_messages_pickle_deepcopy_and_serialise_as_dicts():
    import copy
    import json
    import pickle

    env = Countdown()
    env.reset(seed=0)
    obs = env.step("go")[0]
    assert pickle.loads(pickle.dumps(obs)) == obs and copy.deepcopy(obs) == obs
    assert json.loads(json.dumps(obs)) == obs and all(isinstance(m, dict) for m in obs)
    assert [dict(m) for m in obs][0] == system("Say stop at zero.")
    editable = dict(obs[0])
    editable["content"] = "a plain dict copy is editable"
    assert obs[0]["content"] == "Say stop at zero."


class Lamp:
    """A resource an episode holds: switched on at setup, off at teardown."""

    def __init__(self, log, colour):
        self.log, self.colour, self.on = log, colour, True
        log.append(("on", colour))

    def off(self):
        assert self.on, "switched off twice"
        self.on = False
        self.log.append(("off", self.colour))


@criterion
def lamp_still_on(episode) -> Score:
    return Score(float(episode.state["lamp"].on), "the rubric sees the episode's state before teardown")


class LampGame(Countdown):
    """A stateful source made per episode: setup opens it and shows its first observation."""

    rubric = Rubric([lamp_still_on])
    fail_in = None  # "setup", "respond" or "teardown"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.log = []

    def setup_episode(self, episode):
        colours = ("red", "green", "blue")
        lamp = Lamp(self.log, colours[int(episode.rng.integers(len(colours)))])
        episode.state["lamp"] = lamp
        if self.fail_in == "setup":
            raise OSError("the bulb blew")
        episode.messages.append(user(f"The lamp is {lamp.colour}."))

    def teardown_episode(self, episode):
        episode.state["lamp"].off()
        if self.fail_in == "teardown":
            raise RuntimeError("the switch is stuck")

    def respond(self, episode, action):
        if self.fail_in == "respond":
            raise ValueError("no power")
        return super().respond(episode, action)


def test_setup_makes_per_episode_state_and_its_first_observation():
    env = LampGame()
    obs, _ = env.reset(seed=0, options={"task_id": "train-2"})
    lamp = env.episode.state["lamp"]
    assert obs[-1] == user(f"The lamp is {lamp.colour}.") and [m["role"] for m in obs] == ["system", "user", "user"]
    with pytest.raises(TypeError, match="replace it instead"):
        obs[-1]["content"] = "what setup appended is frozen like the rest"
    assert env.log == [("on", lamp.colour)]
    _, reward, terminated, _, info = env.step("stop")
    # scored while the state was live, torn down right after, once
    assert terminated and reward == 1.0 and info["rubric"]["criteria"]["lamp_still_on"]["score"] == 1.0
    assert env.log == [("on", lamp.colour), ("off", lamp.colour)] and not lamp.on
    env.close()
    assert len(env.log) == 2  # an ended episode is not torn down again
    # the same seed makes the same state: setup draws from episode.rng
    colours = {LampGame().reset(seed=s)[0][-1]["content"] for s in (5, 5)}
    assert len(colours) == 1
    check_env(LampGame(), skip_render_check=True)


def test_truncated_episode_is_torn_down():
    env = LampGame(max_turns=1)
    env.reset(seed=1)
    _, _, terminated, truncated, _ = env.step("wait")
    assert truncated and not terminated and [event for event, _ in env.log] == ["on", "off"]


def test_abandoned_episode_is_torn_down_on_reset_and_on_close():
    env = LampGame()
    env.reset(seed=0)
    first = env.episode.state["lamp"]
    env.step("wait")  # not ended
    env.reset(seed=1)
    assert not first.on and env.episode.state["lamp"].on
    second = env.episode.state["lamp"]
    env.close()
    assert not second.on
    env.close()  # closing twice tears nothing down twice
    assert [event for event, _ in env.log] == ["on", "off", "on", "off"]


def test_failures_in_setup_respond_and_teardown_still_release_the_episode():
    env = LampGame()
    env.fail_in = "setup"
    with pytest.raises(EnvironmentFailure, match="failed in setup_episode: OSError: the bulb blew"):
        env.reset(seed=0)
    assert [event for event, _ in env.log] == ["on", "off"]  # what setup made before failing is released
    with pytest.raises(EpisodeEndedError):
        env.step("x")

    env = LampGame()
    env.fail_in = "respond"
    env.reset(seed=0)
    with pytest.raises(EnvironmentFailure, match="failed in respond: ValueError: no power"):
        env.step("x")
    assert [event for event, _ in env.log] == ["on", "off"]

    env = LampGame()
    env.fail_in = "teardown"
    env.reset(seed=0)
    with pytest.raises(EnvironmentFailure, match="failed in teardown_episode: RuntimeError: the switch is stuck"):
        env.step("stop")
    env.fail_in = None
    env.reset(seed=0)  # a failed teardown is not retried; the next episode starts cleanly
    assert [event for event, _ in env.log] == ["on", "off", "on"]
