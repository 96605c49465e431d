"""The KV cache goes to each model's forward under the name that model takes."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from trainers.generation import cache_kwarg  # noqa: E402


class NewStyle:
    def forward(self, input_ids=None, attention_mask=None, cache=None, use_cache=None, **kwargs):
        pass


class OldStyle:
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        pass


class PeftLike:
    """A wrapper whose own forward takes **kwargs: the base model's signature decides."""

    def __init__(self, base):
        self.base = base

    def get_base_model(self):
        return self.base

    def forward(self, *args, **kwargs):
        pass


def test_transformers_5_models_take_cache():
    assert cache_kwarg(NewStyle()) == "cache"
    assert cache_kwarg(PeftLike(NewStyle())) == "cache"


def test_older_models_take_past_key_values():
    assert cache_kwarg(OldStyle()) == "past_key_values"
    assert cache_kwarg(PeftLike(OldStyle())) == "past_key_values"
