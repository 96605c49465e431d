"""The alembic migrations build exactly the schema the models describe, and run idempotently."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from envhub.hub.db import make_engine, migrate, sqlite_url
from envhub.hub.models import Base


def test_migrations_match_models(tmp_path):
    engine = make_engine(sqlite_url(tmp_path / "hub.db"))
    migrate(engine)
    migrate(engine)  # a second run is a no-op
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
