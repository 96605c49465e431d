"""The hub's tables (SQLAlchemy 2 declarative). Schema changes go through alembic migrations in
``envhub/hub/migrations``; this module and the newest migration describe the same schema."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    """A user, or an organisation (``kind='org'``): either one owns the namespace of its name."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(8), default="user")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class OrgMember(Base):
    __tablename__ = "org_members"

    org_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class Token(Base):
    """An API token, stored as its sha256 only. ``scope`` is ``read`` or ``write`` (write includes read)."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128), default="")
    scope: Mapped[str] = mapped_column(String(8), default="read")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The token that minted this one: it never outlives or out-scopes it, and dies with it.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), nullable=True, index=True)


class Environment(Base):
    __tablename__ = "environments"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_env_namespace_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class EnvVersion(Base):
    """A published version: immutable. The unique constraint makes one of two racing publishes win."""

    __tablename__ = "env_versions"
    __table_args__ = (UniqueConstraint("env_id", "version", name="uq_env_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    env_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(71), index=True)
    size: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(255))
    manifest: Mapped[str] = mapped_column(Text)  # JSON
    publisher_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Pack(Base):
    __tablename__ = "packs"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_pack_namespace_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class PackVersion(Base):
    __tablename__ = "pack_versions"
    __table_args__ = (UniqueConstraint("pack_id", "version", name="uq_pack_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pack_id: Mapped[int] = mapped_column(ForeignKey("packs.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    license: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    environments: Mapped[str] = mapped_column(Text)  # JSON list of {ref, digest}
    signature: Mapped[str | None] = mapped_column(String(128), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the signer's, for pinning on first use
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Entitlement(Base):
    """A user (a lab) may pull the private environments of a pack. Revoking keeps the row, dated."""

    __tablename__ = "entitlements"
    __table_args__ = (UniqueConstraint("pack_id", "user_id", name="uq_entitlement"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pack_id: Mapped[int] = mapped_column(ForeignKey("packs.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    granted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    granted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class AuditEvent(Base):
    """One pull, publish, grant or revoke; the namespace's owner can list them."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    namespace: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    user_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(255))
    digest: Mapped[str | None] = mapped_column(String(71), nullable=True)
    client: Mapped[str | None] = mapped_column(String(255), nullable=True)


class BundleGrant(Base):
    """An environment's owner lets the packs of another namespace sell it. Making the environment
    private withdraws every grant (dated, the row kept); the owner may grant again."""

    __tablename__ = "bundle_grants"
    __table_args__ = (UniqueConstraint("env_id", "namespace", name="uq_bundle_grant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    env_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"), index=True)
    namespace: Mapped[str] = mapped_column(String(64))
    granted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    granted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
