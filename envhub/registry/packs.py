"""Packs: named, versioned bundles of environment versions with a license, optionally signed.

A pack file (``pack.json``) is what ``envhub pack create`` writes, ``envhub sign`` signs and
``envhub pack publish`` uploads::

    {"namespace": "acme", "name": "math-suite", "version": "1.0.0", "license": "...",
     "environments": [{"ref": "acme/algebra@1.2.0", "digest": "sha256:..."}],
     "signature": "<base64 ed25519>", "key_id": "<16 hex>"}

The signature covers the canonical JSON of everything but ``signature``, ``key_id`` and ``public_key`` (sorted
keys, no spaces), so a pack cannot be re-pointed at other environment digests without breaking it.
Keys are ed25519 (``cryptography``): the private key is a PEM file only its owner can read; the
public key is 44 characters of base64, short enough for ``ENVHUB_PACK_PUBLIC_KEY``. A signed pack
also carries its ``public_key``, which says nothing by itself: a puller verifies against the key it
pins for the publisher's namespace (:func:`check_pulled_pack`): ``--public-key``, then
``ENVHUB_PACK_PUBLIC_KEY`` (or ``pack_public_key`` in the config), then the key recorded in
``$ENVHUB_HOME/pack-keys.json`` the first time a pack of that namespace was pulled (trust on first
use, said out loud). Unsigned or invalid packs are refused unless the puller says ``--allow-unsigned``,
and the signed namespace, name and version must be the ones asked for.
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
    signed["public_key"] = base64.b64encode(raw).decode()
    signed["key_id"] = key_id(signed["public_key"])
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


# --- pinned keys, and checking a pulled pack -----------------------------------------------------

PINNED_KEYS_FILE = "pack-keys.json"


def pinned_keys_path() -> Path:
    from envhub.paths import envhub_home

    return envhub_home() / PINNED_KEYS_FILE


def pinned_key(namespace: str) -> str | None:
    """The public key recorded for the packs of ``namespace``, if any."""
    try:
        data = json.loads(pinned_keys_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{pinned_keys_path()} is unreadable: {exc}", hint="fix or delete it; its keys are pinned again on next pull") from exc
    value = data.get(namespace) if isinstance(data, dict) else None
    return load_public_key(value) if isinstance(value, str) else None


def pin_key(namespace: str, public_key_b64: str) -> Path:
    from envhub.identity.artifact import write_atomic

    path = pinned_keys_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    data[namespace] = load_public_key(public_key_b64)
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return path


def check_pulled_pack(
    pack: dict[str, Any], *, namespace: str, name: str, version: str,
    public_key: str | None = None, allow_unsigned: bool = False,
) -> str:
    """Refuse a pulled pack that is not the one asked for or not signed by its publisher's pinned key;
    returns the line to tell the user (which key verified it, or that it was pinned now)."""
    asked = f"{namespace}/{name}@{version}"
    served = pack_ref(pack)
    if served != asked:  # the signature covers these fields: a mirror cannot pass off another signed pack
        raise SignatureError(asked, f"the registry served pack {served} for it")
    if allow_unsigned:
        return f"pack {asked}: signature NOT checked (--allow-unsigned)"
    if not pack.get("signature"):
        raise SignatureError(asked, "it is not signed; pull it with --allow-unsigned only if you trust the registry and its publisher")
    key = load_public_key(public_key) if public_key else (configured_public_key() or pinned_key(namespace))
    if key is not None:
        verify_pack(pack, key)
        return f"signature of {asked} verified with key {key_id(key)}"
    offered = pack.get("public_key")
    if not isinstance(offered, str):
        raise SignatureError(asked, f"no key is pinned for `{namespace}` and the pack names none; pass --public-key")
    verify_pack(pack, load_public_key(offered))
    path = pin_key(namespace, offered)
    return (f"signature of {asked} verified with key {key_id(offered)}, seen for the first time and now pinned for "
            f"`{namespace}` in {path}: later packs of `{namespace}` must be signed by it")
