"""One error envelope everywhere on the hub (issue 13, finding 12): Starlette's own answers (no such
route, a method a route does not take) and a body that is not JSON come back as ``{"error": ...}``
like every envhub error, and the OpenAPI document lists each route's error statuses with that shape."""

from __future__ import annotations

import httpx

from envhub.errors import BadRequestError, MethodNotAllowedError, NotFoundError
from envhub.wire import from_body


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body  # never FastAPI's {"detail": ...}
    return body["error"]


def test_a_missing_route_answers_the_envelope(hub):
    response = httpx.get(f"{hub.url}/api/v1/nothing-here")
    assert response.status_code == 404
    assert _error(response)["code"] == "not_found" and "/api/v1/nothing-here" in _error(response)["message"]
    assert isinstance(from_body(response.json(), 404), NotFoundError)


def test_a_method_a_route_does_not_take_answers_the_envelope_and_allow(hub):
    response = httpx.delete(f"{hub.url}/api/v1/health")
    assert response.status_code == 405 and "GET" in response.headers["allow"]
    assert _error(response)["code"] == "method_not_allowed" and "DELETE" in _error(response)["message"]
    assert isinstance(from_body(response.json(), 405), MethodNotAllowedError)


def test_a_body_that_is_not_json_is_a_400_naming_it(hub):
    token = hub.tokens["alice"]
    response = httpx.post(f"{hub.url}/api/v1/tokens", content=b'{"name": "ci", ', headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "bad_request" and "not JSON" in error["message"] and error["hint"]
    assert isinstance(from_body(response.json(), 400), BadRequestError)
    # A body that is JSON but the wrong shape stays a 422 listing each problem.
    response = httpx.post(f"{hub.url}/api/v1/tokens", json={"name": 7}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 422 and _error(response)["code"] == "invalid_request"


def test_the_openapi_document_lists_every_routes_errors_in_the_envelope(hub):
    spec = httpx.get(f"{hub.url}/openapi.json").json()
    envelope = spec["components"]["schemas"]["ErrorBody"]
    assert envelope["required"] == ["error"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            errors = {int(s): r for s, r in operation["responses"].items() if int(s) >= 400}
            if path in ("/api/v1/health", "/registry.json"):
                continue  # read no token and take no input
            assert {401, 429} <= set(errors), (method, path, sorted(errors))
            for status, answer in errors.items():
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
                assert answer["description"], (method, path, status)
            assert "Retry-After" in errors[429]["headers"]
    publish = spec["paths"]["/api/v1/envs/{namespace}/{name}/{version}"]["put"]["responses"]
    assert {"400", "403", "409", "413", "422"} <= set(publish)
