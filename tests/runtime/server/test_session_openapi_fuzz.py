"""schemathesis against the session server's OpenAPI description (envhub's /v1 and OpenEnv's HTTP
routes), on a real server behind a token: no input gives a 5xx, and every status answered is one
the document lists for that route. Bounded like tests/hub/test_openapi_fuzz.py: a few examples per
operation, without and with the token, so it runs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error, status_code_conformance  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
FAULTY = ROOT / "tests" / "fixtures" / "faulty"
TOKEN = "fuzz-token"


@pytest.fixture
def session_server(serve_env, free_port):
    _, url = serve_env(FAULTY, port=free_port, token=TOKEN, max_sessions=64, step_timeout_s=2.0)
    return url


@pytest.fixture
def api_schema(session_server):
    import httpx

    document = httpx.get(f"{session_server}/openapi.json", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    loaded = schemathesis.openapi.from_dict(document)
    loaded.config.update(base_url=session_server)
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_only_documented_statuses(case):
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        response = case.call(headers=headers, timeout=30)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
