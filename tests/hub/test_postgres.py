"""The hub on PostgreSQL (a real server, started here with initdb/pg_ctl): migrations, publishing,
the publish race and entitlements behave as on SQLite. Skipped where PostgreSQL or psycopg is absent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from envhub.identity.artifact import pack_bytes
from envhub.errors import EnvNotFoundError, VersionConflictError
from envhub.runtime.make import pull


pytest.importorskip("psycopg")
if not (shutil.which("initdb") and shutil.which("pg_ctl")):
    pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed", allow_module_level=True)


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; run it as the `postgres` user when we are root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="module")
def postgres_url():
    # Not under pytest's tmp folder: that one is private to our user, and postgres may run as another.
    root = Path(tempfile.mkdtemp(prefix="envhub-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = root / "data"
    subprocess.run(_as_postgres(["initdb", "-D", str(data), "-A", "trust", "-U", "envhub"]), check=True, capture_output=True, timeout=120)
    subprocess.run(
        _as_postgres(["pg_ctl", "-D", str(data), "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-l", str(root / "log"), "-w", "start"]),
        check=True, capture_output=True, timeout=120,
    )
    try:
        yield f"postgresql+psycopg://envhub@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_hub(tmp_path, isolated_home, postgres_url, hub_factory):
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:  # a fresh schema per test
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
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
