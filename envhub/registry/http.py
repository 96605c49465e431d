"""Registries over HTTP: a static registry (``registry.json`` plus artifacts on any web server or
bucket, read-only) and the hub server (read-write, with tokens).

Every artifact is checked against its sha256 before anyone unpacks it.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import quote

import httpx

from envhub.identity.artifact import sha256_digest
from envhub.errors import DigestMismatchError, RegistryError, RemoteError
from envhub.identity.ids import EnvId, parse_env_id
from envhub.identity.index import EnvEntry, Index, PackEntry, VersionEntry
from envhub.registry.base import Registry
from envhub.registry.names import refuse_bare
from envhub.wire import from_body

TIMEOUT = httpx.Timeout(30.0, connect=5.0)
API = "/api/v1"
HUB_SERVICE = "envhub-hub"


_CLIENTS: dict[str, httpx.Client] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(url: str) -> httpx.Client:
    """One pooled client per scheme, shared by every registry in the process.

    Making an ``httpx.Client`` with certificate checks loads the CA bundle (hundreds of ms), so the
    https client is made once, on first use. Plain-http URLs get a client that never does TLS and
    never follows a redirect (which could lead to an unverified https server).
    """
    scheme = "https" if url.startswith("https://") else "http"
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(scheme)
        if client is None:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
            if scheme == "https":
                client = httpx.Client(timeout=TIMEOUT, limits=limits, follow_redirects=True)
            else:
                client = httpx.Client(timeout=TIMEOUT, limits=limits, verify=False, follow_redirects=False)
            _CLIENTS[scheme] = client
        return client


def _get(client: httpx.Client, url: str, what: str, **kwargs: Any) -> httpx.Response:
    try:
        return client.get(url, **kwargs)
    except httpx.HTTPError as exc:
        raise RegistryError(f"cannot reach {what} at {url}: {exc}", hint="check the URL and that the server is up") from exc


def probe_hub(url: str) -> bool:
    """Whether ``url`` is an envhub hub server (its health route says so)."""
    try:
        response = client_for(url).get(f"{url}{API}/health", timeout=5.0)
        return response.status_code == 200 and response.json().get("service") == HUB_SERVICE
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def _verified(data: bytes, entry: EnvEntry, version: VersionEntry) -> bytes:
    actual = sha256_digest(data)
    if actual != version.digest:
        raise DigestMismatchError(f"{entry.full_name}@{version.version}", version.digest, actual)
    return data


class StaticHttpRegistry(Registry):
    """A read-only registry served as files: ``BASE/registry.json`` and the artifacts it points at."""

    def __init__(self, base_url: str, *, client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.description = f"the static registry at {self.base_url}"
        self._client = client or client_for(self.base_url)
        self._index: Index | None = None

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.status_code != 200:
            raise RegistryError(
                f"{self.description}: GET {what} answered HTTP {response.status_code}",
                hint="check the registry URL; it must serve registry.json and the artifacts beside it",
            )

    def index(self) -> Index:
        if self._index is None:
            response = _get(self._client, f"{self.base_url}/registry.json", self.description)
            self._check(response, "registry.json")
            try:
                self._index = Index.model_validate_json(response.content)
            except ValueError as exc:
                raise RegistryError(f"{self.description}: registry.json is not a registry index: {exc}") from exc
        return self._index

    def fetch(self, entry: EnvEntry, version: VersionEntry) -> bytes:
        if not version.artifact.endswith(".tar.gz"):
            raise RegistryError(
                f"{self.description}: {entry.full_name}@{version.version} points at a folder, not an archive",
                hint="serve a registry written by `envhub export-static`",
            )
        path = "/".join(quote(part) for part in version.artifact.split("/"))
        response = _get(self._client, f"{self.base_url}/{path}", self.description)
        self._check(response, version.artifact)
        return _verified(response.content, entry, version)

    def resolve(self, env_id: EnvId | str) -> tuple[EnvEntry, VersionEntry]:
        if isinstance(env_id, str):
            env_id = parse_env_id(env_id)
        refuse_bare(self.index(), env_id, where=self.description)  # anyone may have published it under any namespace
        return super().resolve(env_id)


class HubRegistry(Registry):
    """The hub server's API, with an optional bearer token."""

    def __init__(self, url: str, *, token: str | None = None, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.description = f"the hub at {self.url}"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or client_for(self.url)

    # --- plumbing --------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request to the API; an error answer becomes the matching envhub error."""
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            response = self._client.request(method, self.url + API + path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryError(f"cannot reach {self.description}: {exc}", hint="check the URL and that the server is up") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text}
            error = from_body(body, response.status_code, defaults={"registry": self.url})
            if isinstance(error, RemoteError):  # an answer with no class here: what is known is who gave it
                raise RegistryError(f"{self.url}: {error}", hint=error.hint)
            raise error
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # --- the Registry interface ------------------------------------------------------------------

    def index(self) -> Index:
        return Index.model_validate(self.json("GET", "/index"))

    def resolve(self, env_id: EnvId | str) -> tuple[EnvEntry, VersionEntry]:
        if isinstance(env_id, str):
            env_id = parse_env_id(env_id)
        if env_id.namespace is None:
            refuse_bare(self.index(), env_id, where=self.description)  # anyone may have published it under any namespace
            return super().resolve(env_id)  # not there at all: the usual not-found error
        # One request that answers 401/403/404 precisely, private environments included.
        entry = EnvEntry.model_validate(self.json("GET", f"/envs/{env_id.namespace}/{env_id.name}"))
        return entry, entry.resolve(env_id.version)

    def fetch(self, entry: EnvEntry, version: VersionEntry) -> bytes:
        response = self.request("GET", f"/envs/{entry.namespace}/{entry.name}/{version.version}/artifact")
        return _verified(response.content, entry, version)

    # --- writing ---------------------------------------------------------------------------------

    def publish_bytes(self, data: bytes, *, namespace: str, name: str, version: str, private: bool = False) -> tuple[VersionEntry, bool]:
        """Upload an artifact; returns (entry, created). The same content again is a no-op."""
        response = self.request(
            "PUT",
            f"/envs/{namespace}/{name}/{version}",
            content=data,
            params={"private": "true" if private else "false"},
            headers={"Content-Type": "application/octet-stream", "X-Envhub-Digest": sha256_digest(data)},
        )
        return VersionEntry.model_validate(response.json()), response.status_code == 201

    def publish(self, folder, *, private: bool = False) -> tuple[VersionEntry, bool]:
        from envhub.identity.artifact import pack_bytes
        from envhub.identity.manifest import load_manifest

        manifest = load_manifest(folder)
        data = pack_bytes(folder)
        return self.publish_bytes(data, namespace=manifest.namespace, name=manifest.name, version=manifest.version, private=private)

    def set_visibility(self, namespace: str, name: str, *, private: bool) -> EnvEntry:
        return EnvEntry.model_validate(self.json("PATCH", f"/envs/{namespace}/{name}", json={"private": private}))

    # --- packs, entitlements, audit --------------------------------------------------------------

    def pack(self, namespace: str, name: str) -> dict[str, PackEntry]:
        data = self.json("GET", f"/packs/{namespace}/{name}")
        return {v: PackEntry.model_validate(p) for v, p in data["versions"].items()}

    def publish_pack(self, pack: dict[str, Any]) -> tuple[PackEntry, bool]:
        ns, name, version = pack["namespace"], pack["name"], pack["version"]
        response = self.request("PUT", f"/packs/{ns}/{name}/{version}", json=pack)
        return PackEntry.model_validate(response.json()), response.status_code == 201

    def grant(self, namespace: str, pack: str, user: str) -> dict[str, Any]:
        return self.json("POST", f"/packs/{namespace}/{pack}/grants", json={"user": user})

    def revoke(self, namespace: str, pack: str, user: str) -> dict[str, Any]:
        return self.json("DELETE", f"/packs/{namespace}/{pack}/grants/{user}")

    def allow_bundling(self, env: str, namespace: str, *, allowed: bool = True) -> dict[str, Any]:
        """Let the packs of ``namespace`` sell ``env`` (``ns/name``, yours), or stop them."""
        if allowed:
            return self.json("POST", f"/envs/{env}/bundlers", json={"name": namespace})
        return self.json("DELETE", f"/envs/{env}/bundlers/{namespace}")

    def audit_log(self, namespace: str, *, limit: int = 100) -> list[dict[str, Any]]:
        return self.json("GET", "/audit", params={"namespace": namespace, "limit": limit})["events"]

    def whoami(self) -> dict[str, Any]:
        return self.json("GET", "/whoami")

    def create_token(self, *, name: str = "", scope: str = "read", expires_in_s: int | None = None) -> dict[str, Any]:
        body = {"name": name, "scope": scope, "expires_in_s": expires_in_s}
        return self.json("POST", "/tokens", content=json.dumps(body), headers={"Content-Type": "application/json"})

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        return self.json("DELETE", f"/tokens/{token_id}")

    def close(self) -> None:
        """Nothing to release: connections belong to the process-wide pool (see :func:`client_for`)."""


__all__ = ["HubRegistry", "StaticHttpRegistry", "probe_hub"]
