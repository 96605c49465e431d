"""The hub on PostgreSQL (a real server, started here with initdb/pg_ctl): migrations, publishing,
the publish race and entitlements behave as on SQLite. Skipped where PostgreSQL or psycopg is absent."""

from __future__ import annotations

import pytest
from hub_services import fresh_schema, have_postgres, postgres_server

from envhub.identity.artifact import pack_bytes
from envhub.errors import EnvNotFoundError, VersionConflictError
from envhub.runtime.make import pull


pytest.importorskip("psycopg")
if not have_postgres():
    pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_hub(tmp_path, isolated_home, postgres_url, hub_factory):
    fresh_schema(postgres_url)  # a fresh schema per test
    return hub_factory(tmp_path / "hub-data", database_url=postgres_url)


def test_migrations_match_models_on_postgres(pg_hub):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from envhub.hub.db import make_engine
    from envhub.hub.models import Base

    engine = make_engine(str(pg_hub.hub.sessions.kw["bind"].url.render_as_string(hide_password=False)))
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_publish_race_and_entitlements_on_postgres(pg_hub, env_folder):
    blobs = [pack_bytes(env_folder(namespace="alice", name="race", extra=f"variant {i}")) for i in range(4)]
    results = pg_hub.race("alice", blobs, name="race", private=True)
    winners = [r for r in results if isinstance(r, tuple)]
    assert len(winners) == 1 and sum(isinstance(r, VersionConflictError) for r in results) == len(blobs) - 1

    alice, bob = pg_hub.client("alice"), pg_hub.client("bob")
    with pytest.raises(EnvNotFoundError):
        pull("alice/race", source=bob)
    alice.publish_pack({"namespace": "alice", "name": "suite", "version": "1.0.0", "license": "per lab",
                        "environments": [{"ref": "alice/race@1.0.0", "digest": winners[0][0].digest}]})
    alice.grant("alice", "suite", "bob")
    assert pull("alice/race", source=bob)[2]
    assert any(e["action"] == "pull" and e["user"] == "bob" for e in alice.audit_log("alice"))
