"""Packs: named, versioned bundles of environment versions with a license, optionally signed.

A pack file (``pack.json``) is what ``envhub pack create`` writes, ``envhub sign`` signs and
``envhub pack publish`` uploads::

    {"namespace": "acme", "name": "math-suite", "version": "1.0.0", "license": "...",
     "environments": [{"ref": "acme/algebra@1.2.0", "digest": "sha256:..."}],
     "signature": "<base64 ed25519>", "key_id": "<16 hex>"}

The signature covers the canonical JSON of everything but ``signature`` and ``key_id`` (sorted
keys, no spaces), so a pack cannot be re-pointed at other environment digests without breaking it.
Keys are ed25519 (``cryptography``): the private key is a PEM file only its owner can read; the
public key is 44 characters of base64, short enough for ``ENVHUB_PACK_PUBLIC_KEY``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from envhub.errors import RegistryError, SignatureError
from envhub.identity.ids import NAME_RE, SEMVER_RE, parse_env_id

PUBLIC_KEY_ENV = "ENVHUB_PACK_PUBLIC_KEY"
SIGNED_FIELDS = ("namespace", "name", "version", "license", "description", "environments")


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - cryptography ships with the hub extra
        raise RegistryError("signing packs needs `cryptography`", hint="pip install 'envhub[hub]'") from exc
    return serialization, ed25519


def pack_ref(pack: dict[str, Any]) -> str:
    return f"{pack.get('namespace')}/{pack.get('name')}@{pack.get('version')}"


def validate_pack(pack: Any) -> dict[str, Any]:
    """Check a pack's shape; every problem is named."""
    if not isinstance(pack, dict):
        raise RegistryError("a pack is a JSON object", hint="write one with `envhub pack create`")
    problems = []
    for key in ("namespace", "name"):
        if not isinstance(pack.get(key), str) or not NAME_RE.match(pack[key]):
            problems.append(f"`{key}` must be a lowercase name")
    if not isinstance(pack.get("version"), str) or not SEMVER_RE.match(pack["version"]):
        problems.append("`version` must be a semantic version like 1.0.0")
    if not isinstance(pack.get("license", ""), str):
        problems.append("`license` must be text")
    envs = pack.get("environments")
    if not isinstance(envs, list) or not envs:
        problems.append("`environments` must list at least one {ref, digest}")
    else:
        for i, item in enumerate(envs):
            ref = item.get("ref") if isinstance(item, dict) else None
            digest = item.get("digest") if isinstance(item, dict) else None
            try:
                env_id = parse_env_id(ref) if isinstance(ref, str) else None
            except ValueError:
                env_id = None
            if env_id is None or env_id.namespace is None or env_id.version is None or not SEMVER_RE.match(env_id.version):
                problems.append(f"`environments[{i}].ref` must be namespace/name@x.y.z")
            if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
                problems.append(f"`environments[{i}].digest` must be sha256:<64 hex>")
    if problems:
        raise RegistryError(f"pack {pack_ref(pack)} is invalid: " + "; ".join(problems), hint="fix the pack file")
    return pack


def canonical_bytes(pack: dict[str, Any]) -> bytes:
    """What the signature covers."""
    body = {k: pack.get(k, "" if k in ("license", "description") else None) for k in SIGNED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(public_key_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest()[:16]


def generate_keys(out_dir: str | Path, *, name: str = "pack-signing") -> tuple[Path, Path, str]:
    """Write ``NAME.pem`` (private, mode 0600) and ``NAME.pub`` (base64); return (private, public, public_b64)."""
    serialization, ed25519 = _crypto()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out_dir / f"{name}.pem", out_dir / f"{name}.pub"
    if private_path.exists():
        raise RegistryError(f"{private_path} already exists", hint="pass --out to write the keys elsewhere, or delete it")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public_b64 = base64.b64encode(raw).decode()
    public_path.write_text(public_b64 + "\n")
    return private_path, public_path, public_b64


def sign_pack(pack: dict[str, Any], private_key_path: str | Path) -> dict[str, Any]:
    """``pack`` with ``signature`` and ``key_id`` set."""
    serialization, ed25519 = _crypto()
    validate_pack(pack)
    try:
        key = serialization.load_pem_private_key(Path(private_key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(pack_ref(pack), f"cannot read the private key {private_key_path}: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(pack_ref(pack), f"{private_key_path} is not an ed25519 key; make one with `envhub pack-keys`")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signed = dict(pack)
    signed["signature"] = base64.b64encode(key.sign(canonical_bytes(pack))).decode()
    signed["key_id"] = key_id(base64.b64encode(raw).decode())
    return signed


def load_public_key(value: str) -> str:
    """A public key given as base64 text or as the path of a ``.pub`` file; returns the base64."""
    text = value.strip()
    if Path(text).expanduser().is_file():
        text = Path(text).expanduser().read_text().strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise SignatureError("(key)", f"{value!r} is not an ed25519 public key (44 base64 characters or a .pub file)")
    return text


def configured_public_key() -> str | None:
    """``ENVHUB_PACK_PUBLIC_KEY``, or ``pack_public_key`` in the config file."""
    from envhub.registry.config import read_config

    value = os.environ.get(PUBLIC_KEY_ENV) or read_config().get("pack_public_key")
    return load_public_key(str(value)) if value else None


def verify_pack(pack: dict[str, Any], public_key_b64: str) -> None:
    """Raise :class:`SignatureError` unless ``pack`` is signed by ``public_key_b64``."""
    serialization, ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    ref = pack_ref(pack)
    signature = pack.get("signature")
    if not signature:
        raise SignatureError(ref, "it is not signed, and a public key is configured to verify packs")
    public = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
    try:
        public.verify(base64.b64decode(signature), canonical_bytes(pack))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(ref, f"its signature does not verify with key {key_id(public_key_b64)}") from exc
