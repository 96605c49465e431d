"""envhub: a hub and gym-style SDK for reinforcement-learning environments for language models.

>>> import envhub
>>> env = envhub.make("arithmetic", level="easy")
>>> messages, info = env.reset(seed=0)
>>> messages, reward, terminated, truncated, info = env.step("<answer>4</answer>")
"""

from envhub import errors
from envhub._lazy import lazy_getattr
from envhub.env.core import ChatEnv, Episode, Reply, assistant, system, tool, user
from envhub.identity.ids import EnvId, parse_env_id
from envhub.runtime.make import locate, make, pull
from envhub.identity.manifest import EnvIdentity, Manifest, load_manifest
from envhub.runtime.registration import register_bundled, register_installed
from envhub.env.judge import JudgeCriterion
from envhub.env.rubric import Criterion, FunctionCriterion, Rubric, RubricResult, Score, criterion
from envhub.env.spaces import Conversation, Message

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
    "make_async",
    "parse_env_id",
    "prewarm",
    "pull",
    "register_bundled",
    "register_installed",
    "system",
    "tool",
    "user",
]

# The pooled runtimes load the session client only when first asked for.
__getattr__ = lazy_getattr(__name__, {"make_async": "envhub.runtime.remote", "prewarm": "envhub.runtime.remote"})

register_bundled()
register_installed()
