"""Alembic migrations of the hub's database; ``envhub.hub.db.migrate`` runs them to head."""
