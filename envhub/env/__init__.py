"""The Env contract: :mod:`~envhub.env.core` (``ChatEnv``, ``Episode``), :mod:`~envhub.env.spaces`
(messages and the conversation space), :mod:`~envhub.env.rubric` (criteria and scoring) and
:mod:`~envhub.env.judge` (LLM-judge criteria over any OpenAI-compatible endpoint)."""
