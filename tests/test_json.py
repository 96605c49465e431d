"""The protocol's JSON: orjson's speed where installed, the standard library's answers everywhere."""

import json
import math

import numpy as np
import pytest

from envhub import _json


@pytest.mark.parametrize(
    "value",
    [
        {"role": "user", "content": "héllo \u2603 \"quoted\" \n"},
        {"i": 3, "status": 200, "body": {"reward": 0.5, "terminated": True, "info": {"xs": [1, 2.5, None]}}},
        [],
        {"big": 2**70},  # past orjson's 64 bits: the standard library takes it
    ],
)
def test_round_trip_matches_the_standard_library(value):
    encoded = _json.dumps(value)
    assert isinstance(encoded, bytes)
    assert json.loads(encoded) == value
    assert _json.loads(encoded) == value


def test_numpy_values_and_the_default_hook():
    encoded = _json.dumps({"x": np.float32(0.25), "n": np.int64(3), "a": np.arange(3), "s": {1}}, default=sorted)
    assert json.loads(encoded) == {"x": 0.25, "n": 3, "a": [0, 1, 2], "s": [1]}


def test_what_python_writes_python_reads():
    assert math.isnan(_json.loads(json.dumps({"r": float("nan")}))["r"])


def test_bad_json_raises_value_error():
    with pytest.raises(ValueError):
        _json.loads(b"{not json")
