"""``envhub serve-model``: an OpenAI-compatible server over a local transformers model.

:func:`~envhub.evaluation.model_server.app.serve` loads a model (the embedded SmolLM2-135M-Instruct by
default) and LoRA adapters by name, and serves ``/v1/models`` and ``/v1/chat/completions`` (with
streaming), so that evaluation and LLM judging can run with nothing but this machine.
:mod:`~envhub.evaluation.model_server.scripted` is a scripted endpoint with fault injection for tests and
benchmarks.
"""

from __future__ import annotations

from envhub._lazy import lazy_getattr

__all__ = ["ScriptedEndpoint", "create_app", "serve", "serve_in_thread"]

_LAZY = {
    "create_app": "envhub.evaluation.model_server.app",
    "serve": "envhub.evaluation.model_server.app",
    "ScriptedEndpoint": "envhub.evaluation.model_server.scripted",
    "serve_in_thread": "envhub.evaluation.model_server.scripted",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
