"""Gymnasium spaces for chat: a conversation (list of messages) and a text action."""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from gymnasium import spaces

ROLES = ("system", "user", "assistant", "tool")
_SAMPLE_CHARSET = string.ascii_letters + string.digits + " .,?!-"


def is_message(value: Any) -> bool:
    """A message is a dict with a str ``role`` from :data:`ROLES` and str ``content``."""
    return (
        isinstance(value, dict)
        and value.get("role") in ROLES
        and isinstance(value.get("content"), str)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    )


class FrozenMessage(dict):
    """A message of a conversation: a ``{"role", "content"}`` dict that refuses changes in place.

    Environments hold their conversation as these, and observations are new lists of them, so an
    observation costs a list, not a copy of every message, and what a server sent its client stays
    what the episode holds (a step is answered with only the new messages). To change a message,
    replace it: ``messages[i] = user("...")``.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "a message in the conversation cannot be changed in place; replace it instead: messages[i] = user(...)"
        )

    __setitem__ = __delitem__ = __ior__ = update = setdefault = pop = popitem = clear = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and deepcopy would fill it through __setitem__
        return (FrozenMessage, (dict(self),))


class Conversation(spaces.Space[list]):
    """The observation space: a list of ``{"role", "content"}`` messages, at most ``max_messages``."""

    def __init__(self, *, max_messages: int = 10_000, seed: int | np.random.Generator | None = None) -> None:
        self.max_messages = max_messages
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        return isinstance(x, list) and len(x) <= self.max_messages and all(is_message(m) for m in x)

    def sample(self, mask: Any = None, probability: Any = None) -> list[dict[str, str]]:
        n = int(self.np_random.integers(1, 4))
        chars = np.array(list(_SAMPLE_CHARSET))
        return [
            {
                "role": str(self.np_random.choice(ROLES)),
                "content": "".join(self.np_random.choice(chars, size=int(self.np_random.integers(0, 40)))),
            }
            for _ in range(n)
        ]

    def __repr__(self) -> str:
        return f"Conversation(max_messages={self.max_messages})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Conversation) and other.max_messages == self.max_messages


class Message(spaces.Text):
    """The action space: the assistant's message, any str of at most ``max_length`` characters.

    Unlike :class:`gymnasium.spaces.Text`, membership does not restrict the charset: a model may
    answer in any script. Sampling draws from a small printable charset.
    """

    def __init__(self, max_length: int = 1_000_000, *, seed: int | np.random.Generator | None = None) -> None:
        super().__init__(max_length=max_length, min_length=0, charset=_SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        # Short samples: a random 1M-character message would only slow checks down.
        length = int(self.np_random.integers(0, 64))
        chars = np.array(list(_SAMPLE_CHARSET))
        return "".join(self.np_random.choice(chars, size=length))

    def __repr__(self) -> str:
        return f"Message(max_length={self.max_length})"
