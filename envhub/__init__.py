"""envhub: a hub and gym-style SDK for reinforcement-learning environments for language models.

>>> import envhub
>>> env = envhub.make("arithmetic", level="easy")
>>> messages, info = env.reset(seed=0)
>>> messages, reward, terminated, truncated, info = env.step("<answer>4</answer>")
"""

from envhub import errors
from envhub.core import ChatEnv, Episode, Reply, assistant, system, tool, user
from envhub.ids import EnvId, parse_env_id
from envhub.make import locate, make, pull
from envhub.manifest import EnvIdentity, Manifest, load_manifest
from envhub.registration import register_bundled
from envhub.rubric import Criterion, FunctionCriterion, JudgeCriterion, Rubric, RubricResult, Score, criterion
from envhub.spaces import Conversation, Message

__version__ = "0.1.0"

__all__ = [
    "ChatEnv",
    "Conversation",
    "Criterion",
    "EnvId",
    "EnvIdentity",
    "Episode",
    "FunctionCriterion",
    "JudgeCriterion",
    "Manifest",
    "Message",
    "Reply",
    "Rubric",
    "RubricResult",
    "Score",
    "assistant",
    "criterion",
    "errors",
    "load_manifest",
    "locate",
    "make",
    "parse_env_id",
    "pull",
    "register_bundled",
    "system",
    "tool",
    "user",
]

register_bundled()
