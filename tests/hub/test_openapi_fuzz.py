"""schemathesis against the hub's OpenAPI description, on a real server: no input gives a 500, and
every status answered is one the document lists for that route.

Bounded: a few examples per operation, with and without a write token, so it runs in seconds.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error, status_code_conformance  # noqa: E402

from envhub.identity.artifact import pack_bytes  # noqa: E402


@pytest.fixture
def api_schema(hub, env_folder):
    # Something to find: a public and a private environment, and a pack.
    alice = hub.client("alice")
    public, _ = alice.publish(env_folder(namespace="alice", name="adder"))
    alice.publish_bytes(pack_bytes(env_folder(namespace="alice", name="secret")), namespace="alice", name="secret", version="1.0.0", private=True)
    alice.publish_pack({"namespace": "alice", "name": "suite", "version": "1.0.0", "license": "MIT",
                        "environments": [{"ref": "alice/adder@1.0.0", "digest": public.digest}]})
    return schemathesis.openapi.from_url(f"{hub.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case, hub):
    for headers in ({}, {"Authorization": f"Bearer {hub.tokens['alice']}"}):
        response = case.call(headers=headers, timeout=30)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
