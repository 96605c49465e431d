"""The Env contract: multi-turn chat episodes in the gymnasium API.

An episode is a conversation. ``reset`` returns the first messages (system and first user turn);
each ``step`` takes the assistant's message text and returns the whole conversation so far, with the
environment's answer appended (a new list of read-only messages, :class:`~envhub.env.spaces.FrozenMessage`).
When the episode ends (the environment says it is done, or ``max_turns`` assistant turns were taken),
the rubric scores it: the last step's reward is the rubric's total plus any per-step reward, and
``info["rubric"]`` holds every criterion's score.

Authors subclass :class:`ChatEnv` and write only what is specific to their task::

    class Echo(ChatEnv):
        rubric = Rubric([exact_match])

        def tasks(self, split):                    # or sample_task() for a generator
            return [{"id": "t1", "text": "hello"}]

        def initial_messages(self, task):
            return [system("Repeat the text."), user(task["text"])]

        def respond(self, episode, action):        # multi-turn: answer, or end with done=True
            return Reply(done=True)

A stateful source (a game, a sandbox) is made per episode in ``setup_episode`` and kept in
``episode.state``; ``teardown_episode`` releases it when the episode ends, when ``reset`` starts the
next one first, or on ``close``.

The episode loop, turn counting, seeding, truncation and scoring belong to this module.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium
import numpy as np

from envhub.errors import (
    CriterionError,
    EnvhubError,
    EnvironmentFailure,
    EpisodeEndedError,
    InvalidActionError,
    InvalidOptionError,
    TaskNotFoundError,
)
from envhub.env.rubric import Rubric
from envhub.env.spaces import Conversation, FrozenMessage, Message, is_message

if TYPE_CHECKING:
    from envhub.identity.manifest import EnvIdentity, Manifest

Msg = dict[str, str]
Task = dict[str, Any]


def system(content: str) -> Msg:
    return {"role": "system", "content": content}


def user(content: str) -> Msg:
    return {"role": "user", "content": content}


def assistant(content: str) -> Msg:
    return {"role": "assistant", "content": content}


def tool(content: str, *, name: str | None = None) -> Msg:
    return {"role": "tool", "content": content, **({"name": name} if name else {})}


@dataclass
class Reply:
    """The environment's answer to one assistant turn.

    ``messages`` are appended to the conversation (user or tool turns); ``done`` ends the episode
    (terminated); ``reward`` is a per-step reward added to this step's reward; ``info`` is merged
    into the step's info.
    """

    messages: list[Msg] = field(default_factory=list)
    done: bool = False
    reward: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Episode:
    """One episode's state, handed to ``respond`` and to every rubric criterion.

    ``state`` is the author's scratch space (e.g. the secret number, a tool's memory); ``rng`` is
    the episode's seeded generator: use it, not ``random``, so that episodes replay exactly.
    """

    task: Task
    task_id: str
    split: str
    messages: list[Msg]
    rng: np.random.Generator
    max_turns: int
    turn: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    terminated: bool = False
    truncated: bool = False

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def assistant_messages(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "assistant"]

    @property
    def completion(self) -> str:
        """The assistant's last message, or "" before its first."""
        answers = self.assistant_messages
        return answers[-1] if answers else ""


class ChatEnv(gymnasium.Env[list, str]):
    """Base class of every envhub environment; see the module docstring for what to override."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["human", "ansi"], "render_fps": 1}
    #: Assistant turns before the episode is truncated; the manifest's ``max_turns`` overrides it.
    max_turns: int = 1
    #: The splits ``reset(options={"split": ...})`` accepts; the first is the default.
    splits: tuple[str, ...] = ("train", "test")
    #: The rubric that scores finished episodes. Set it on the class or in ``__init__``.
    rubric: Rubric

    def __init__(self, *, max_turns: int | None = None, render_mode: str | None = None) -> None:
        self.manifest: Manifest | None = None
        self._identity: EnvIdentity | None = None
        self._episode: Episode | None = None
        self._live: Episode | None = None  # set up by setup_episode and not yet torn down
        if max_turns is not None:
            if not isinstance(max_turns, int) or max_turns < 1:
                raise InvalidOptionError(self.env_name, "max_turns", f"must be an int >= 1, got {max_turns!r}")
            self.max_turns = max_turns
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise InvalidOptionError(self.env_name, "render_mode", f"must be one of {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.observation_space = Conversation()
        self.action_space = Message()

    # --- what authors write ----------------------------------------------------------------------

    def tasks(self, split: str) -> Sequence[Task]:
        """The tasks of ``split``, each a dict with a unique ``"id"``. Dataset-backed envs override this."""
        raise NotImplementedError(f"{type(self).__name__} must define tasks() or sample_task()")

    def sample_task(self, rng: np.random.Generator, split: str) -> Task:
        """Draw a task of ``split`` with ``rng``. The default picks uniformly from :meth:`tasks`."""
        pool = self.tasks(split)
        if not pool:
            raise InvalidOptionError(self.env_name, "split", f"split {split!r} has no tasks")
        return pool[int(rng.integers(len(pool)))]

    def get_task(self, task_id: str, split: str) -> Task:
        """The task with id ``task_id``. Generators that encode the task in its id override this."""
        for task in self.tasks(split):
            if task["id"] == task_id:
                return task
        raise TaskNotFoundError(self.env_name, task_id, (t["id"] for t in self.tasks(split)))

    def initial_messages(self, task: Task) -> list[Msg]:
        """The conversation's first messages: usually a system prompt and the first user turn."""
        raise NotImplementedError(f"{type(self).__name__} must define initial_messages()")

    def respond(self, episode: Episode, action: str) -> Reply:
        """Answer the assistant's ``action`` (already appended to ``episode.messages``).

        The default ends the episode: a single-turn environment needs nothing more.
        """
        return Reply(done=True)

    def setup_episode(self, episode: Episode) -> None:
        """Per-episode setup, called by ``reset`` once the episode exists (task, rng, first messages).

        Keep what lives with the episode in ``episode.state`` (a game, a sandbox, a connection); a
        stateful source may append its first observation to ``episode.messages``. Use
        ``episode.rng`` for anything random. The default does nothing.
        """

    def teardown_episode(self, episode: Episode) -> None:
        """Release what :meth:`setup_episode` made. Called once per episode: when it ends (after the
        rubric scored it, or when the environment failed), when ``reset`` starts the next episode
        before this one ended, and on ``close``. The default does nothing.
        """

    def reference_action(self, episode: Episode) -> str | None:
        """A correct next assistant message for ``episode``, where the task has one (None otherwise).

        Used by ``envhub validate`` and ``envhub audit`` to check that a right answer earns the
        reward that reward-hacking probes must not.
        """
        return None

    # --- identity --------------------------------------------------------------------------------

    @property
    def env_name(self) -> str:
        """The name errors use: ``namespace/name@version`` when loaded from a manifest."""
        if self.manifest is not None:
            return self.manifest.ref
        return type(self).__name__

    @property
    def identity(self) -> EnvIdentity:
        """Namespace, name, version and artifact digest of this environment."""
        if self._identity is None:
            from envhub.identity.manifest import EnvIdentity

            self._identity = EnvIdentity("local", type(self).__name__.lower(), "0.0.0", None)
        return self._identity

    @property
    def episode(self) -> Episode | None:
        """The current episode, or None before the first ``reset``."""
        return self._episode

    # --- the gymnasium API -----------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Msg], dict]:
        super().reset(seed=seed)
        self._end_episode()  # an episode abandoned before it ended is released first
        options = dict(options or {})
        split = options.pop("split", self.splits[0])
        task_id = options.pop("task_id", None)
        if options:
            raise InvalidOptionError(self.env_name, ", ".join(sorted(options)), "unknown reset option (use split or task_id)")
        if split not in self.splits:
            raise InvalidOptionError(self.env_name, "split", f"{split!r} is not one of {list(self.splits)}")
        try:
            if task_id is not None:
                task = self.get_task(str(task_id), split)
            else:
                task = self.sample_task(self.np_random, split)
            # The episode's own generator, derived from the env's so that a seed fixes both.
            rng = np.random.default_rng(self.np_random.integers(2**63))
            messages = self._checked_messages(self.initial_messages(task), "initial_messages")
        except EnvhubError:
            raise
        except Exception as exc:
            raise EnvironmentFailure(self.env_name, "reset", f"{type(exc).__name__}: {exc}") from exc
        if "id" not in task:
            raise EnvironmentFailure(self.env_name, "reset", "the task has no `id` key")
        episode = Episode(
            task=task, task_id=str(task["id"]), split=split, messages=messages, rng=rng, max_turns=self.max_turns
        )
        self._episode = self._live = episode
        try:
            self.setup_episode(episode)
            episode.messages[:] = self._checked_messages(episode.messages, "setup_episode")
        except Exception as exc:
            episode.terminated = True
            self._end_episode(quiet=True)  # release whatever setup made before it failed
            if isinstance(exc, EnvhubError):
                raise
            raise EnvironmentFailure(self.env_name, "setup_episode", f"{type(exc).__name__}: {exc}") from exc
        messages = episode.messages
        info = {"task_id": self._episode.task_id, "split": split, "env": self.identity.ref, "max_turns": self.max_turns}
        return list(messages), info

    def step(self, action: str) -> tuple[list[Msg], float, bool, bool, dict[str, Any]]:
        _, reward, terminated, truncated, info = self.step_delta(action)
        return list(self._episode.messages), reward, terminated, truncated, info  # type: ignore[union-attr]

    def step_delta(self, action: str) -> tuple[list[Msg] | None, float, bool, bool, dict[str, Any]]:
        """``step`` without a copy of the whole conversation, for the session server, which sends
        deltas: returns the messages appended after ``action`` (frozen, safe to share), or None when
        ``respond`` replaced or removed earlier messages (then the whole conversation is needed)."""
        episode = self._episode
        if episode is None:
            raise EpisodeEndedError(self.env_name, "step() called before reset()")
        if episode.done:
            raise EpisodeEndedError(self.env_name)
        if not isinstance(action, str):
            raise InvalidActionError(self.env_name, f"expected str, got {type(action).__name__}")
        if len(action) > self.action_space.max_length:
            raise InvalidActionError(
                self.env_name, f"{len(action)} characters is over the limit of {self.action_space.max_length}"
            )
        messages = episode.messages
        # A shallow snapshot: messages are frozen, so an identity check tells whether respond()
        # rewrote the history (cheap, where comparing or copying every message is not).
        history = messages.copy()
        said = FrozenMessage(role="assistant", content=action)
        messages.append(said)
        episode.turn += 1
        try:
            reply = self.respond(episode, action)
            if not isinstance(reply, Reply):
                raise TypeError(f"respond() returned {type(reply).__name__}, expected Reply")
            new_messages = self._checked_messages(reply.messages, "respond")
            rewritten = (
                len(messages) != len(history) + 1 or messages[-1] is not said or any(map(operator.is_not, history, messages))
            )
            if rewritten:  # what respond() put in the history is checked and frozen like the rest
                messages[:] = self._checked_messages(messages, "respond (the rewritten history)")
        except EnvhubError:
            episode.terminated = True
            self._end_episode(quiet=True)
            raise
        except Exception as exc:
            episode.terminated = True  # the environment is in an unknown state: end the episode
            self._end_episode(quiet=True)
            raise EnvironmentFailure(self.env_name, "respond", f"{type(exc).__name__}: {exc}") from exc
        messages.extend(new_messages)
        episode.terminated = bool(reply.done)
        episode.truncated = not episode.terminated and episode.turn >= self.max_turns
        reward = float(reply.reward)
        info: dict[str, Any] = {"turn": episode.turn, "task_id": episode.task_id, **reply.info}
        if episode.done:
            try:
                result = self.rubric.score(episode)
            except CriterionError as exc:
                self._end_episode(quiet=True)
                raise CriterionError(exc.criterion, exc.reason, env=self.env_name) from exc
            self._end_episode()
            reward += result.total
            info["rubric"] = result.to_dict()
        if self.render_mode == "human":
            self.render()
        return None if rewritten else new_messages, reward, episode.terminated, episode.truncated, info

    def close(self) -> None:
        self._end_episode()
        super().close()

    def _end_episode(self, *, quiet: bool = False) -> None:
        """Tear the live episode down, once. ``quiet`` keeps a teardown failure from hiding the
        error that ended the episode; otherwise it is an EnvironmentFailure."""
        episode, self._live = self._live, None
        if episode is None:
            return
        try:
            self.teardown_episode(episode)
        except Exception as exc:
            if quiet:
                return
            if isinstance(exc, EnvhubError):
                raise
            raise EnvironmentFailure(self.env_name, "teardown_episode", f"{type(exc).__name__}: {exc}") from exc

    def render(self) -> str | None:
        if self._episode is None:
            return None
        text = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in self._episode.messages)
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def _checked_messages(self, messages: Any, where: str) -> list[Msg]:
        if not isinstance(messages, list) or not all(is_message(m) for m in messages):
            raise EnvironmentFailure(
                self.env_name, where, 'must return a list of {"role", "content"} dicts with str values'
            )
        return [FrozenMessage(m) for m in messages]
