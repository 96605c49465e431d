"""One version grammar in the SDK and the hub (issue 13, finding 4): build metadata (``0.3.0+build1``)
is refused at publish, and no stored version can make a page answer 500 or a pull crash."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from envhub.cli import build_app
from envhub.errors import EnvNotFoundError, ManifestError
from envhub.hub.models import Environment, EnvVersion
from envhub.identity.artifact import pack_bytes, sha256_digest
from envhub.runtime.make import pull

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(build_app(), list(args), catch_exceptions=True)


def put(hub, folder, version: str) -> httpx.Response:
    """An upload straight to the hub, past the SDK's own checks (as any HTTP client may send)."""
    data = pack_bytes(folder)
    headers = {"Authorization": f"Bearer {hub.tokens['alice']}", "X-Envhub-Digest": sha256_digest(data)}
    return httpx.put(f"{hub.url}/api/v1/envs/alice/x/{version}", content=data, headers=headers)


def assert_pages_answer(hub, *, listed: list[str]) -> None:
    for path in ("/", "/registry.json", "/api/v1/index", "/api/v1/envs/alice/x"):
        assert httpx.get(hub.url + path).status_code in (200, 404), path
    page = httpx.get(hub.url + "/")
    assert page.status_code == 200
    for version in listed:
        assert version in page.text


def test_build_metadata_is_refused_by_the_sdk_and_the_hub(hub, env_folder):
    answers = {v: put(hub, env_folder(namespace="alice", name="x", version=v), v) for v in ("0.3.0+a", "0.3.0+b")}
    assert_pages_answer(hub, listed=[])  # was: GET / answered 500 for everyone
    with pytest.raises(EnvNotFoundError):
        pull("alice/x", source=hub.client())  # was: KeyError '0.3.0'
    for version, answer in answers.items():  # was: both published (201), one version under two names
        assert answer.status_code == 422, (version, answer.text)
        assert answer.json()["error"]["code"] == "invalid_request" and "version" in answer.json()["error"]["message"]

    with pytest.raises(ManifestError, match="version"):  # the SDK refuses it before any upload
        hub.client("alice").publish(env_folder(namespace="alice", name="x", version="0.3.0+build1"))

    hub.client("alice").publish(env_folder(namespace="alice", name="x", version="0.3.0"))
    for spec in ("alice/x", "alice/x@0.3"):
        _, version, _ = pull(spec, source=hub.client())
        assert version.version == "0.3.0"
    listed = cli("versions", "alice/x", "--registry", hub.url)
    assert listed.exit_code == 0 and "alice/x@0.3.0" in listed.output, listed.output


def test_a_stored_version_outside_the_grammar_breaks_no_page(hub, env_folder):
    # A hub that accepted build metadata before this rule holds such rows; they are left out, not served.
    entry, _ = hub.client("alice").publish(env_folder(namespace="alice", name="x", version="0.2.0"))
    with hub.hub.sessions() as s:
        env = s.query(Environment).filter_by(namespace="alice", name="x").one()
        good = s.query(EnvVersion).filter_by(env_id=env.id).one()
        s.add(EnvVersion(env_id=env.id, version="0.3.0+build1", digest=good.digest, size=good.size, storage_key=good.storage_key,
                         manifest=json.dumps({**json.loads(good.manifest), "version": "0.3.0+build1"}), publisher_id=good.publisher_id))
        s.commit()

    assert_pages_answer(hub, listed=["0.2.0"])  # was: 500
    assert "0.3.0+build1" not in httpx.get(hub.url + "/").text
    assert set(hub.client().index().environments["alice/x"].versions) == {"0.2.0"}
    _, version, _ = pull("alice/x", source=hub.client())  # was: KeyError '0.3.0'
    assert version.version == "0.2.0" and version.digest == entry.digest
    listed = cli("versions", "alice/x", "--registry", hub.url)
    assert listed.exit_code == 0 and "alice/x@0.2.0" in listed.output, listed.output
