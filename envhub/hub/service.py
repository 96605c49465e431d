"""The hub's rules, apart from HTTP: who may do what, publishing, pulling, packs, entitlements and
the audit log. Routes in :mod:`envhub.hub.app` only translate requests into these calls; every
refusal is an :mod:`envhub.errors` class, which carries its own code and HTTP status. Versions are
those of :mod:`envhub.identity.ids`; a stored row outside that grammar is never served.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from envhub.identity.artifact import file_digest, unpack
from envhub.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DigestMismatchError,
    EnvNotFoundError,
    ManifestError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    VersionConflictError,
    VersionNotFoundError,
)
from envhub.errors import suggest as near_matches
from envhub.hub.models import AuditEvent, BundleGrant, Entitlement, Environment, EnvVersion, OrgMember, Pack, PackVersion, Token, User, utcnow
from envhub.hub.storage import ARTIFACTS, Storage, artifact_key
from envhub.hub.uploads import ScratchSpace
from envhub.identity.ids import DEFAULT_NAMESPACE, NAME_RE, is_version
from envhub.identity.index import EnvEntry, Index, PackEntry, VersionEntry, sort_versions
from envhub.identity.manifest import load_manifest
from envhub.registry.base import search_index
from envhub.registry.packs import validate_pack

TOKEN_PREFIX = "ehub_"
MAX_ENTRIES = 20_000  # files and folders in one uploaded artifact
SCOPES = ("read", "write")
#: Namespaces no user or organisation may take: ``envhub`` is the bundled environments' (a bare name's).
RESERVED_NAMESPACES = (DEFAULT_NAMESPACE,)


@dataclass(frozen=True)
class Download:
    """An artifact on its way out: ``chunks`` yields its bytes, hashing them; the last chunk is
    held back until the digest matches, so a blob changed in storage never reaches a client whole
    (the stream ends early instead, and the client's own digest check fails)."""

    ref: str
    digest: str
    size: int
    source: Iterator[bytes]

    def chunks(self) -> Iterator[bytes]:
        h = hashlib.sha256()
        held = None
        for chunk in self.source:
            h.update(chunk)
            if held is not None:
                yield held
            held = chunk
        if "sha256:" + h.hexdigest() != self.digest:
            raise DigestMismatchError(f"stored artifact of {self.ref}", self.digest, "sha256:" + h.hexdigest())
        if held is not None:
            yield held


def _hash(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: the token's user and the token's scope."""

    user_id: int
    name: str
    scope: str
    is_admin: bool
    token_id: int
    expires_at: datetime | None = None  # the earliest expiry along the chain of tokens that minted this one

    @property
    def can_write(self) -> bool:
        return self.scope == "write"


def hash_token(raw: str) -> str:
    # Tokens are 256 random bits: a plain sha256 is enough (no dictionary to attack), and lookups stay O(1).
    return hashlib.sha256(raw.encode()).hexdigest()


def _listed(versions: Iterable[str]) -> list[str]:
    """``versions`` in order, leaving out any an older hub stored outside the grammar (``0.3.0+build1``)."""
    return sort_versions(v for v in versions if is_version(v))


def _valid_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ConflictError(
            f"{what} {value!r} is not a valid name",
            hint="use lowercase letters, digits, '.', '_' and '-', starting and ending alphanumeric",
        )
    return value


class Hub:
    """The hub's state: a database (through ``sessions``) and blob ``storage``."""

    def __init__(
        self, sessions: sessionmaker, storage: Storage, *, max_unpacked_bytes: int = 256 << 20, url: str = "",
        reserved_namespaces: Iterable[str] = RESERVED_NAMESPACES, scratch: ScratchSpace | None = None,
    ) -> None:
        self.sessions = sessions
        # Uploads being received and unpacked to be checked; by default in the system's temporary folder.
        self.scratch = scratch or ScratchSpace(Path(tempfile.gettempdir()) / "envhub-hub-scratch")
        self.reserved_namespaces = frozenset(reserved_namespaces)
        self.storage = storage
        self.max_unpacked_bytes = max_unpacked_bytes
        self.url = url

    # --- users, organisations, tokens -----------------------------------------------------------

    def create_user(self, name: str, *, kind: str = "user", is_admin: bool = False, admin: Principal | None = None) -> tuple[dict, str | None]:
        """Create a user (with a write token, returned once) or an organisation (no token)."""
        if admin is not None and not admin.is_admin:
            raise PermissionDeniedError("only an administrator may create users")
        _valid_name(name, "user name")
        if name in self.reserved_namespaces:
            raise ConflictError(
                f"the name {name!r} is reserved on this hub: it is the namespace of envhub's bundled environments or one its operators keep",
                hint="pick another name; an administrator may still publish into a reserved namespace",
            )
        with self.sessions() as s:
            user = User(name=name, kind=kind, is_admin=is_admin)
            s.add(user)
            try:
                s.flush()
            except IntegrityError:
                raise ConflictError(f"the name {name!r} is taken", hint="pick another name") from None
            raw = None
            if kind == "user":
                raw = self._new_token(s, user.id, name="initial", scope="write", expires_in_s=None)[1]
            s.commit()
            return {"id": user.id, "name": user.name, "kind": user.kind, "is_admin": user.is_admin}, raw

    def _new_token(
        self, s: Session, user_id: int, *, name: str, scope: str, expires_in_s: int | None,
        parent: Principal | None = None,
    ) -> tuple[Token, str]:
        if scope not in SCOPES:
            raise ConflictError(f"scope {scope!r} is not one of {', '.join(SCOPES)}", hint="use `read` or `write`")
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = utcnow() + timedelta(seconds=expires_in_s) if expires_in_s is not None else None
        if parent is not None and parent.expires_at is not None:  # never outlives the token that minted it
            expires = min(expires or parent.expires_at, parent.expires_at)
        token = Token(user_id=user_id, token_hash=hash_token(raw), prefix=raw[:12], name=name, scope=scope, expires_at=expires,
                      parent_id=parent.token_id if parent is not None else None)
        s.add(token)
        s.flush()
        return token, raw

    def authenticate(self, raw: str | None) -> Principal | None:
        """The principal of a bearer token; None without one. Unknown, expired or revoked tokens raise."""
        if not raw:
            return None
        with self.sessions() as s:
            row = s.execute(select(Token, User).join(User, User.id == Token.user_id).where(Token.token_hash == hash_token(raw))).first()
            if row is None:
                raise AuthenticationError("the token is not known to this hub", registry=self.url or None)
            token, user = row
            expires_at = None
            link, seen = token, set()
            while link is not None and link.id not in seen:  # this token, then each one that minted it
                seen.add(link.id)
                whose = "" if link is token else f", which minted it,"
                if link.revoked_at is not None:
                    raise AuthenticationError(f"token {link.prefix}…{whose} was revoked at {link.revoked_at:%Y-%m-%d %H:%M} UTC", registry=self.url or None)
                if link.expires_at is not None and link.expires_at <= utcnow():
                    raise AuthenticationError(f"token {link.prefix}…{whose} expired at {link.expires_at:%Y-%m-%d %H:%M:%S} UTC", registry=self.url or None)
                if link.expires_at is not None:
                    expires_at = min(expires_at or link.expires_at, link.expires_at)
                link = s.get(Token, link.parent_id) if link.parent_id is not None else None
            return Principal(user.id, user.name, token.scope, user.is_admin, token.id, expires_at)

    def create_token(self, who: Principal, *, name: str = "", scope: str = "read", expires_in_s: int | None = None) -> dict:
        if scope == "write" and not who.can_write:
            raise PermissionDeniedError("a read token cannot create a write token")
        if expires_in_s is not None and expires_in_s <= 0:
            raise ConflictError("expires_in_s must be positive", hint="pass a number of seconds, or nothing for no expiry")
        with self.sessions() as s:
            token, raw = self._new_token(s, who.user_id, name=name, scope=scope, expires_in_s=expires_in_s, parent=who)
            s.commit()
            return {**self._token_json(token), "token": raw}

    @staticmethod
    def _token_json(t: Token) -> dict:
        return {
            "id": t.id, "name": t.name, "scope": t.scope, "prefix": t.prefix,
            "created_at": t.created_at.isoformat(), "expires_at": t.expires_at.isoformat() if t.expires_at else None,
            "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
        }

    def list_tokens(self, who: Principal) -> list[dict]:
        with self.sessions() as s:
            return [self._token_json(t) for t in s.scalars(select(Token).where(Token.user_id == who.user_id).order_by(Token.id))]

    def revoke_token(self, who: Principal, token_id: int) -> dict:
        with self.sessions() as s:
            token = s.get(Token, token_id)
            if token is None or (token.user_id != who.user_id and not who.is_admin):
                raise NotFoundError(f"no token {token_id} of yours", hint="list yours with GET /api/v1/tokens")
            if token.revoked_at is None:
                token.revoked_at = utcnow()
            s.commit()
            return self._token_json(token)

    def create_org(self, who: Principal, name: str) -> dict:
        self._need_write(who)
        org, _ = self.create_user(name, kind="org")
        with self.sessions() as s:
            s.add(OrgMember(org_id=org["id"], user_id=who.user_id))
            s.commit()
        return org

    def add_member(self, who: Principal, org: str, user: str) -> dict:
        self._need_write(who)
        self._need_owner(who, org)
        with self.sessions() as s:
            org_row = s.scalar(select(User).where(User.name == org, User.kind == "org"))
            member = s.scalar(select(User).where(User.name == user, User.kind == "user"))
            if org_row is None or member is None:
                raise NotFoundError(f"no organisation {org!r} with a user {user!r}", hint="check both names")
            if s.get(OrgMember, (org_row.id, member.id)) is None:
                s.add(OrgMember(org_id=org_row.id, user_id=member.id))
            s.commit()
        return {"org": org, "user": user}

    # --- permissions ----------------------------------------------------------------------------

    def owns(self, who: Principal | None, namespace: str) -> bool:
        if who is None:
            return False
        if who.is_admin or who.name == namespace:
            return True
        with self.sessions() as s:
            org = s.scalar(select(User.id).where(User.name == namespace, User.kind == "org"))
            return org is not None and s.get(OrgMember, (org, who.user_id)) is not None

    def _need_write(self, who: Principal | None) -> Principal:
        if who is None:
            raise AuthenticationError("this needs a token with the `write` scope", registry=self.url or None)
        if not who.can_write:
            raise PermissionDeniedError(f"token of {who.name} has the `read` scope; this needs `write`")
        return who

    def _need_owner(self, who: Principal, namespace: str) -> None:
        if not self.owns(who, namespace):
            raise PermissionDeniedError(f"{who.name} may not write to namespace `{namespace}`: it belongs to someone else")

    def _entitled_refs(self, s: Session, who: Principal | None) -> set[str]:
        """Every ``ns/name@version`` the user may pull through a pack grant. An environment of another
        namespace than the pack's counts only while its owner lets that namespace bundle it."""
        if who is None:
            return set()
        rows = s.execute(
            select(Pack.namespace, PackVersion.environments)
            .join(PackVersion, PackVersion.pack_id == Pack.id)
            .join(Entitlement, Entitlement.pack_id == Pack.id)
            .where(Entitlement.user_id == who.user_id, Entitlement.revoked_at.is_(None))
        )
        refs = {(pack_ns, item["ref"]) for pack_ns, text in rows for item in json.loads(text)}
        return {ref for pack_ns, ref in refs if ref.partition("/")[0] == pack_ns or self._may_bundle(s, ref.partition("@")[0], pack_ns)}

    @staticmethod
    def _may_bundle(s: Session, full_name: str, pack_namespace: str) -> bool:
        """Whether the owner of ``full_name`` lets the packs of ``pack_namespace`` sell it, now."""
        env_ns, _, env_name = full_name.partition("/")
        if env_ns == pack_namespace:
            return True
        return s.scalar(
            select(BundleGrant.id).join(Environment, Environment.id == BundleGrant.env_id)
            .where(Environment.namespace == env_ns, Environment.name == env_name,
                   BundleGrant.namespace == pack_namespace, BundleGrant.revoked_at.is_(None))
        ) is not None

    def _access(self, s: Session, who: Principal | None, env: Environment, versions: list[EnvVersion]) -> list[EnvVersion] | None:
        """The versions of ``env`` that ``who`` may see, or None when ``who`` may not know it exists."""
        if not env.private or self.owns(who, env.namespace):
            return versions
        refs = self._entitled_refs(s, who)
        full = f"{env.namespace}/{env.name}"
        allowed = [v for v in versions if f"{full}@{v.version}" in refs]
        return allowed or None

    def _not_found(self, s: Session, namespace: str, name: str) -> EnvNotFoundError:
        """The one 404 for a name that is missing or that the caller may not see: near matches come
        from public names only, so the answer is the same either way."""
        known = [f"{ns}/{n}" for ns, n in s.execute(select(Environment.namespace, Environment.name).where(Environment.private.is_(False)))]
        return EnvNotFoundError(f"{namespace}/{name}", where=f"the hub{' at ' + self.url if self.url else ''}", available=known)

    def _visible_env(self, s: Session, who: Principal | None, namespace: str, name: str) -> tuple[Environment, list[EnvVersion]]:
        """An environment and the versions ``who`` may see; a 404 like a missing name's when none."""
        env = s.scalar(select(Environment).where(Environment.namespace == namespace, Environment.name == name))
        if env is not None:
            versions = self._access(s, who, env, list(s.scalars(select(EnvVersion).where(EnvVersion.env_id == env.id))))
            if versions is not None:
                return env, versions
        raise self._not_found(s, namespace, name)

    # --- environments ---------------------------------------------------------------------------

    def _env(self, s: Session, namespace: str, name: str) -> Environment:
        """An environment for its owner's operations (the caller's ownership is checked first)."""
        env = s.scalar(select(Environment).where(Environment.namespace == namespace, Environment.name == name))
        if env is None:
            raise self._not_found(s, namespace, name)
        return env

    @staticmethod
    def _version_entry(env: Environment, v: EnvVersion) -> VersionEntry:
        manifest = json.loads(v.manifest)
        return VersionEntry(
            version=v.version, digest=v.digest, artifact=f"api/v1/envs/{env.namespace}/{env.name}/{v.version}/artifact.tar.gz",
            size=v.size, description=manifest.get("description", ""), tags=manifest.get("tags", []),
            license=manifest.get("license"), max_turns=manifest.get("max_turns"),
        )

    def _env_entry(self, env: Environment, versions: list[EnvVersion]) -> EnvEntry:
        return EnvEntry(
            namespace=env.namespace, name=env.name, description=env.description, tags=json.loads(env.tags),
            private=env.private, versions={v.version: self._version_entry(env, v) for v in versions if is_version(v.version)},
        )

    def env_entry(self, who: Principal | None, namespace: str, name: str) -> EnvEntry:
        with self.sessions() as s:
            env, versions = self._visible_env(s, who, namespace, name)
            return self._env_entry(env, versions)

    def index(self, who: Principal | None) -> Index:
        """Every environment ``who`` can see (public ones, and private ones owned or entitled), and every pack."""
        with self.sessions() as s:
            index = Index()
            versions: dict[int, list[EnvVersion]] = {}
            for v in s.scalars(select(EnvVersion)):
                versions.setdefault(v.env_id, []).append(v)
            for env in s.scalars(select(Environment).order_by(Environment.namespace, Environment.name)):
                visible = self._access(s, who, env, versions.get(env.id, []))
                if visible is None:
                    continue
                index.environments[f"{env.namespace}/{env.name}"] = self._env_entry(env, visible)
            for entry in self._pack_views(s, who, s.execute(select(Pack, PackVersion).join(PackVersion, PackVersion.pack_id == Pack.id)).all()):
                index.packs.setdefault(f"{entry.namespace}/{entry.name}", {})[entry.version] = entry
            return index

    def check_can_publish(self, who: Principal | None, namespace: str) -> Principal:
        """Refuse early (401/403), before an upload's body is read."""
        who = self._need_write(who)
        self._need_owner(who, namespace)
        return who

    def publish(
        self, who: Principal | None, namespace: str, name: str, version: str, upload: Path, *,
        digest: str | None = None, declared_digest: str | None = None, private: bool = False,
    ) -> tuple[VersionEntry, bool]:
        """Check and store the artifact in the file ``upload`` (its ``digest`` when the caller
        hashed it already) as ``namespace/name@version``; returns (entry, created). The file is
        read as a stream, never whole; the caller removes it."""
        who = self.check_can_publish(who, namespace)
        ref = f"{namespace}/{name}@{version}"
        digest = digest or file_digest(upload)
        if declared_digest and declared_digest != digest:
            raise DigestMismatchError(f"upload of {ref}", declared_digest, digest)
        manifest = self._checked_manifest(upload, namespace, name, version)
        with self.sessions() as s:  # a version already there: same bytes is a no-op, others conflict
            existing = s.execute(
                select(Environment, EnvVersion).join(EnvVersion, EnvVersion.env_id == Environment.id)
                .where(Environment.namespace == namespace, Environment.name == name, EnvVersion.version == version)
            ).first()
            if existing is not None:
                return self._existing(existing[0], existing[1], ref, digest)
        # The blob first, then the row: a version becomes visible only once its bytes are stored.
        key = artifact_key(digest)
        if not self.storage.exists(key):
            self.storage.put_file(key, upload)
        try:
            env_id = self._get_or_create_env(namespace, name, manifest, private)
            with self.sessions() as s:
                row = EnvVersion(env_id=env_id, version=version, digest=digest, size=upload.stat().st_size, storage_key=key,
                                 manifest=json.dumps(manifest, sort_keys=True), publisher_id=who.user_id)
                s.add(row)
                try:
                    s.flush()
                except IntegrityError:  # a concurrent publish of the same version won the race
                    s.rollback()
                    env = s.get(Environment, env_id)
                    other = s.scalar(select(EnvVersion).where(EnvVersion.env_id == env_id, EnvVersion.version == version))
                    return self._existing(env, other, ref, digest)
                env = s.get(Environment, env_id)
                env.description, env.tags = manifest.get("description", ""), json.dumps(manifest.get("tags", []))
                env.private = env.private or private  # publishing with --private hides an environment; it never unhides one
                self._audit(s, namespace, who, "publish", ref, digest)
                s.commit()
                entry = self._version_entry(env, row)
            if not self.storage.exists(key):  # a failed publish of the same bytes (another namespace) dropped it meanwhile
                self.storage.put_file(key, upload)
            return entry, True
        finally:
            self._drop_if_unreferenced(key)

    def _drop_if_unreferenced(self, key: str) -> None:
        """Delete a blob no version points at: the loser of a publish race, or one whose row failed.
        Safe against a concurrent publish of the same bytes: those are the same version (the
        manifest names it), whose row exists by now (it beat us) or never will (it lost too)."""
        with self.sessions() as s:
            if s.scalar(select(EnvVersion.id).where(EnvVersion.storage_key == key).limit(1)) is None:
                self.storage.delete(key)

    def sweep(self, *, grace_s: float) -> dict[str, int]:
        """Remove what a crash left in storage: writes that never completed and blobs no version
        points at, both older than ``grace_s`` (younger ones may be another replica's publish in
        progress, whose row is about to be written). Run at start-up."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=grace_s)
        incomplete = self.storage.remove_incomplete(cutoff)
        with self.sessions() as s:
            referenced = set(s.scalars(select(EnvVersion.storage_key)))
        orphans = [key for key, written in self.storage.keys(ARTIFACTS) if key not in referenced and written < cutoff]
        for key in orphans:
            self.storage.delete(key)
        return {"incomplete": incomplete, "orphans": len(orphans)}

    def _existing(self, env: Environment, row: EnvVersion, ref: str, digest: str) -> tuple[VersionEntry, bool]:
        if row.digest != digest:
            raise VersionConflictError(ref, row.digest, digest)
        return self._version_entry(env, row), False

    def _get_or_create_env(self, namespace: str, name: str, manifest: dict, private: bool) -> int:
        for _ in range(5):
            with self.sessions() as s:
                env_id = s.scalar(select(Environment.id).where(Environment.namespace == namespace, Environment.name == name))
                if env_id is not None:
                    return env_id
                env = Environment(namespace=namespace, name=name, description=manifest.get("description", ""),
                                  tags=json.dumps(manifest.get("tags", [])), private=private)
                s.add(env)
                try:
                    s.commit()
                    return env.id
                except IntegrityError:
                    s.rollback()
        raise ConflictError(f"could not create {namespace}/{name}; try again")  # pragma: no cover

    def _checked_manifest(self, upload: Path, namespace: str, name: str, version: str) -> dict[str, Any]:
        """Unpack by the safe rules into a scratch folder, read the manifest, check it names this version."""
        scratch = Path(tempfile.mkdtemp(prefix="unpack-", dir=self.scratch.folder))
        try:
            folder = unpack(upload, scratch / "env", max_bytes=self.max_unpacked_bytes, max_entries=MAX_ENTRIES)
            manifest = load_manifest(folder)
        except ManifestError as exc:
            raise ManifestError("envhub.toml in the uploaded artifact", exc.problems) from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        lies = [
            f"`{field}` is {got!r} but the artifact was published as {want!r}"
            for field, got, want in (("namespace", manifest.namespace, namespace), ("name", manifest.name, name), ("version", manifest.version, version))
            if got != want
        ]
        if lies:
            raise ManifestError("envhub.toml in the uploaded artifact", lies)
        return manifest.model_dump(mode="json")

    def set_visibility(self, who: Principal | None, namespace: str, name: str, *, private: bool) -> EnvEntry:
        """Make an environment private or public (its owner, with a write token)."""
        who = self._need_write(who)
        self._need_owner(who, namespace)
        with self.sessions() as s:
            env = self._env(s, namespace, name)
            env.private = private
            self._audit(s, namespace, who, "private" if private else "public", f"{namespace}/{name}", None)
            if private:  # other namespaces' packs stop selling it until the owner allows them again
                for grant in s.scalars(select(BundleGrant).where(BundleGrant.env_id == env.id, BundleGrant.revoked_at.is_(None))):
                    grant.revoked_at = utcnow()
                    self._audit(s, namespace, who, "disallow", f"{namespace}/{name} -> {grant.namespace}", None)
            s.commit()
            versions = list(s.scalars(select(EnvVersion).where(EnvVersion.env_id == env.id)))
            return self._env_entry(env, versions)

    def allow_bundling(self, who: Principal | None, namespace: str, name: str, pack_namespace: str, *, allowed: bool = True) -> dict:
        """Let the packs of ``pack_namespace`` sell ``namespace/name`` (or stop them); its owner only."""
        who = self._need_write(who)
        self._need_owner(who, namespace)
        _valid_name(pack_namespace, "namespace")
        with self.sessions() as s:
            env = self._env(s, namespace, name)
            grant = s.scalar(select(BundleGrant).where(BundleGrant.env_id == env.id, BundleGrant.namespace == pack_namespace))
            if allowed and grant is None:
                s.add(BundleGrant(env_id=env.id, namespace=pack_namespace, granted_by=who.user_id))
            elif allowed:
                grant.revoked_at, grant.granted_at, grant.granted_by = None, utcnow(), who.user_id
            elif grant is None or grant.revoked_at is not None:
                raise NotFoundError(f"`{pack_namespace}` holds no active permission to bundle {namespace}/{name}")
            else:
                grant.revoked_at = utcnow()
            self._audit(s, namespace, who, "allow" if allowed else "disallow", f"{namespace}/{name} -> {pack_namespace}", None)
            s.commit()
        return {"env": f"{namespace}/{name}", "namespace": pack_namespace, "allowed": allowed}

    def artifact(self, who: Principal | None, namespace: str, name: str, version: str, *, client: str | None = None) -> Download:
        """A version's bytes as a stream, recording the pull in the audit log. The stored size is
        checked first; the digest as the bytes go out (see :class:`Download`)."""
        with self.sessions() as s:
            env, versions = self._visible_env(s, who, namespace, name)  # access first: a 404 lists only visible versions
            row = next((v for v in versions if v.version == version), None)
            if row is None:
                raise VersionNotFoundError(f"{namespace}/{name}", version, _listed(v.version for v in versions))
            ref = f"{namespace}/{name}@{version}"
            size = self.storage.size(row.storage_key)
            if size != row.size:  # changed behind the hub's back (the digest is worked out only on this rare path)
                actual = "sha256:" + _hash(self.storage.iter_bytes(row.storage_key)) if size is not None else "nothing (the blob is gone)"
                raise DigestMismatchError(f"stored artifact of {ref}", row.digest, actual)
            self._audit(s, namespace, who, "pull", ref, row.digest, client)
            s.commit()
            return Download(ref, row.digest, row.size, self.storage.iter_bytes(row.storage_key))

    def search(self, who: Principal | None, text: str) -> list[EnvEntry]:
        return search_index(self.index(who), text)

    # --- packs and entitlements -----------------------------------------------------------------

    @staticmethod
    def _pack_entry(pack: Pack, pv: PackVersion) -> PackEntry:
        return PackEntry(
            name=pack.name, version=pv.version, license=pv.license, environments=json.loads(pv.environments),
            signature=pv.signature, namespace=pack.namespace, description=pv.description, key_id=pv.key_id, public_key=pv.public_key,
        )

    def _pack_views(self, s: Session, who: Principal | None, rows: Iterable[tuple[Pack, PackVersion]]) -> list[PackEntry]:
        """Packs as ``who`` may see them. Its owner and entitled labs see everything, and so does anyone
        when all it holds is public. Of a pack that sells private environments anyone else sees the
        name, version, description and public contents only: no private reference or its digest, no
        license (the terms of the sale) and no signature (which covers what they cannot see)."""
        private = {f"{ns}/{n}" for ns, n in s.execute(select(Environment.namespace, Environment.name).where(Environment.private.is_(True)))}
        entitled = set()
        if who is not None:
            entitled = set(s.scalars(select(Entitlement.pack_id).where(Entitlement.user_id == who.user_id, Entitlement.revoked_at.is_(None))))
        views = []
        for pack, pv in rows:
            if not is_version(pv.version):
                continue
            entry = self._pack_entry(pack, pv)
            public = [i for i in entry.environments if i.get("ref", "").partition("@")[0] not in private]
            if len(public) < len(entry.environments) and not (self.owns(who, pack.namespace) or pack.id in entitled):
                entry = entry.model_copy(update={"environments": public, "license": "", "signature": None, "key_id": None, "public_key": None})
            views.append(entry)
        return views

    def publish_pack(self, who: Principal | None, namespace: str, name: str, version: str, pack: dict[str, Any]) -> tuple[PackEntry, bool]:
        who = self._need_write(who)
        self._need_owner(who, namespace)
        try:
            pack = validate_pack({**pack, "namespace": namespace, "name": name, "version": version})
        except RegistryError as exc:  # a pack that is not one: the caller's mistake, answered 400
            raise BadRequestError(str(exc), hint=exc.hint) from None
        with self.sessions() as s:
            for item in pack["environments"]:  # each must exist with that digest; private ones must be the publisher's
                env_ns, _, rest = item["ref"].partition("/")
                env_name, _, env_version = rest.partition("@")
                env, versions = self._visible_env(s, who, env_ns, env_name)  # one the caller may not see: 404, nothing of it told
                row = next((v for v in versions if v.version == env_version), None)
                if row is None:
                    raise VersionNotFoundError(f"{env_ns}/{env_name}", env_version, _listed(v.version for v in versions))
                if row.digest != item["digest"]:  # the caller may see this version, so may see its digest
                    raise DigestMismatchError(f"pack entry {item['ref']}", item["digest"], row.digest)
                if not self._may_bundle(s, f"{env_ns}/{env_name}", namespace):
                    raise PermissionDeniedError(
                        f"pack {namespace}/{name} may not bundle `{env_ns}/{env_name}`: a pack sells its own namespace's "
                        f"environments, or those whose owner allows it, and `{env_ns}` has not allowed `{namespace}` "
                        f"(the owner runs `envhub pack allow {env_ns}/{env_name} {namespace}`)"
                    )
            pack_row = s.scalar(select(Pack).where(Pack.namespace == namespace, Pack.name == name))
            if pack_row is None:
                pack_row = Pack(namespace=namespace, name=name)
                s.add(pack_row)
                s.flush()
            envs_json = json.dumps(pack["environments"], sort_keys=True)
            existing = s.scalar(select(PackVersion).where(PackVersion.pack_id == pack_row.id, PackVersion.version == version))
            if existing is not None:
                same = existing.environments == envs_json and existing.license == pack.get("license", "")
                if not same:
                    raise ConflictError(f"pack {namespace}/{name}@{version} is already published with other contents",
                                        hint="published pack versions are immutable: bump the version")
                if pack.get("signature") and existing.signature != pack["signature"]:
                    existing.signature, existing.key_id = pack["signature"], pack.get("key_id")  # signing later is allowed
                    existing.public_key = pack.get("public_key")
                    s.commit()
                return self._pack_entry(pack_row, existing), False
            pv = PackVersion(pack_id=pack_row.id, version=version, license=pack.get("license", ""), description=pack.get("description", ""),
                             environments=envs_json, signature=pack.get("signature"), key_id=pack.get("key_id"),
                             public_key=pack.get("public_key"))
            s.add(pv)
            try:
                s.flush()
            except IntegrityError:
                raise ConflictError(f"pack {namespace}/{name}@{version} was published concurrently; try again") from None
            self._audit(s, namespace, who, "pack", f"{namespace}/{name}@{version}", None)
            s.commit()
            return self._pack_entry(pack_row, pv), True

    def pack_versions(self, who: Principal | None, namespace: str, name: str) -> dict[str, PackEntry]:
        with self.sessions() as s:
            pack = self._pack(s, namespace, name)
            rows = [(pack, pv) for pv in s.scalars(select(PackVersion).where(PackVersion.pack_id == pack.id))]
            return {p.version: p for p in self._pack_views(s, who, rows)}

    def _pack(self, s: Session, namespace: str, name: str) -> Pack:
        pack = s.scalar(select(Pack).where(Pack.namespace == namespace, Pack.name == name))
        if pack is None:
            known = [f"{ns}/{n}" for ns, n in s.execute(select(Pack.namespace, Pack.name))]
            matches = near_matches(f"{namespace}/{name}", known)
            did = (" Did you mean " + " or ".join(f"`{m}`" for m in matches) + "?") if matches else ""
            raise NotFoundError(f"pack `{namespace}/{name}` not found.{did}", hint="the hub's front page lists its packs")
        return pack

    def grant(self, who: Principal | None, namespace: str, name: str, user: str) -> dict:
        who = self._need_write(who)
        self._need_owner(who, namespace)
        with self.sessions() as s:
            pack = self._pack(s, namespace, name)
            lab = s.scalar(select(User).where(User.name == user, User.kind == "user"))
            if lab is None:
                raise NotFoundError(f"no user {user!r} on this hub", hint="ask the lab for its user name")
            ent = s.scalar(select(Entitlement).where(Entitlement.pack_id == pack.id, Entitlement.user_id == lab.id))
            if ent is None:
                s.add(Entitlement(pack_id=pack.id, user_id=lab.id, granted_by=who.user_id))
            else:
                ent.revoked_at, ent.granted_at, ent.granted_by = None, utcnow(), who.user_id
            self._audit_packed(s, pack, who, "grant", f"{namespace}/{name} -> {user}")
            s.commit()
        return {"pack": f"{namespace}/{name}", "user": user, "active": True}

    def revoke(self, who: Principal | None, namespace: str, name: str, user: str) -> dict:
        who = self._need_write(who)
        self._need_owner(who, namespace)
        with self.sessions() as s:
            pack = self._pack(s, namespace, name)
            ent = s.scalar(
                select(Entitlement).join(User, User.id == Entitlement.user_id)
                .where(Entitlement.pack_id == pack.id, User.name == user, Entitlement.revoked_at.is_(None))
            )
            if ent is None:
                raise NotFoundError(f"{user!r} holds no active grant of pack {namespace}/{name}")
            ent.revoked_at = utcnow()
            self._audit_packed(s, pack, who, "revoke", f"{namespace}/{name} -> {user}")
            s.commit()
        return {"pack": f"{namespace}/{name}", "user": user, "active": False}

    def grants(self, who: Principal | None, namespace: str, name: str) -> list[dict]:
        if who is None:
            raise AuthenticationError("listing grants needs the pack owner's token", registry=self.url or None)
        self._need_owner(who, namespace)
        with self.sessions() as s:
            pack = self._pack(s, namespace, name)
            rows = s.execute(select(Entitlement, User.name).join(User, User.id == Entitlement.user_id).where(Entitlement.pack_id == pack.id))
            return [{"user": u, "granted_at": e.granted_at.isoformat(), "active": e.revoked_at is None} for e, u in rows]

    # --- audit ----------------------------------------------------------------------------------

    @staticmethod
    def _audit(s: Session, namespace: str, who: Principal | None, action: str, subject: str, digest: str | None, client: str | None = None) -> None:
        s.add(AuditEvent(namespace=namespace, user_id=who.user_id if who else None, user_name=who.name if who else None,
                         action=action, subject=subject[:255], digest=digest, client=(client or "")[:255] or None))

    def _audit_packed(self, s: Session, pack: Pack, who: Principal, action: str, subject: str) -> None:
        """An event of a pack, in the pack's log and in the log of each namespace whose environments it bundles."""
        namespaces = {pack.namespace}
        for text in s.scalars(select(PackVersion.environments).where(PackVersion.pack_id == pack.id)):
            namespaces |= {item["ref"].partition("/")[0] for item in json.loads(text)}
        for ns in sorted(namespaces):
            self._audit(s, ns, who, action, subject, None)

    def audit_log(self, who: Principal | None, namespace: str, *, limit: int = 100) -> list[dict]:
        if who is None:
            raise AuthenticationError("the audit log needs the namespace owner's token", registry=self.url or None)
        if not self.owns(who, namespace):
            raise PermissionDeniedError(f"only the owner of namespace `{namespace}` may read its audit log; {who.name} does not own it")
        limit = max(1, min(int(limit), 10_000))
        with self.sessions() as s:
            rows = s.scalars(select(AuditEvent).where(AuditEvent.namespace == namespace).order_by(AuditEvent.id.desc()).limit(limit))
            return [
                {"at": e.at.isoformat(timespec="seconds") + "Z", "user": e.user_name, "action": e.action,
                 "subject": e.subject, "digest": e.digest, "client": e.client}
                for e in rows
            ]

