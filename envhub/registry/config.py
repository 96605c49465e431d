"""Which registry envhub talks to, and the tokens it talks with.

The registry is chosen, first match wins, by the ``--registry`` flag, the ``ENVHUB_REGISTRY``
environment variable, or ``registry = "..."`` in ``$ENVHUB_HOME/config.toml``. A location is a URL
(``http(s)://``: a hub server or a static registry, told apart by asking the hub's health route;
``static+http(s)://`` skips the question) or a folder (``file://`` or a path).

Tokens live in ``$ENVHUB_HOME/credentials.json``, readable by the user only (mode 0600), one per
registry URL; ``ENVHUB_TOKEN`` overrides them.

The namespaces whose pulled code the user trusts to run on this machine (``envhub trust NS``) are
``trusted_namespaces = [...]`` in the same config file (see :mod:`envhub.runtime.trust`).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from envhub.identity.artifact import write_atomic
from envhub.errors import RegistryError
from envhub.paths import envhub_home
from envhub.registry.base import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REGISTRY_ENV = "ENVHUB_REGISTRY"
TOKEN_ENV = "ENVHUB_TOKEN"
CONFIG_FILE = "config.toml"
CREDENTIALS_FILE = "credentials.json"


def config_path() -> Path:
    return envhub_home() / CONFIG_FILE


def read_config() -> dict[str, object]:
    path = config_path()
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RegistryError(f"config file {path} is unreadable: {exc}", hint=f"fix or delete {path}") from exc


def _is_string_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def write_config(values: dict[str, str | list[str]]) -> Path:
    """Merge top-level ``values`` (strings, or lists of strings) into the config file."""
    config = {k: v for k, v in read_config().items() if isinstance(v, str) or _is_string_list(v)}
    config.update(values)
    # JSON's strings and arrays of strings are also TOML's.
    text = "".join(f"{key} = {json.dumps(value)}\n" for key, value in sorted(config.items()))
    write_atomic(config_path(), text.encode())
    return config_path()


# --- trusted namespaces --------------------------------------------------------------------------

TRUSTED_KEY = "trusted_namespaces"


def trusted_namespaces() -> list[str]:
    """The namespaces recorded by ``envhub trust``, sorted."""
    value = read_config().get(TRUSTED_KEY, [])
    if not _is_string_list(value):
        raise RegistryError(
            f"`{TRUSTED_KEY}` in {config_path()} is not a list of namespaces",
            hint=f'write it as {TRUSTED_KEY} = ["acme"], or delete the line and use `envhub trust NS`',
        )
    return sorted(set(value))


def set_trusted(namespace: str, trusted: bool) -> bool:
    """Add ``namespace`` to the trusted ones (or remove it); False when nothing changed."""
    now = set(trusted_namespaces())
    if (namespace in now) == trusted:
        return False
    write_config({TRUSTED_KEY: sorted((now | {namespace}) if trusted else (now - {namespace}))})
    return True


def configured_registry(flag: str | None = None) -> str | None:
    """The registry location named by the flag, ``ENVHUB_REGISTRY`` or the config file, or None."""
    if flag:
        return flag
    if os.environ.get(REGISTRY_ENV):
        return os.environ[REGISTRY_ENV]
    value = read_config().get("registry")
    return value if isinstance(value, str) and value else None


def normalize_url(url: str) -> str:
    return url.rstrip("/")


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://", "static+http://", "static+https://"))


# --- credentials ---------------------------------------------------------------------------------


def credentials_path() -> Path:
    return envhub_home() / CREDENTIALS_FILE


def _read_credentials() -> dict[str, str]:
    path = credentials_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RegistryError(f"credentials file {path} is unreadable: {exc}", hint="delete it and `envhub login` again") from exc
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def save_token(url: str, token: str) -> Path:
    """Store ``token`` for ``url`` in the credentials file, created with mode 0600."""
    creds = _read_credentials()
    creds[normalize_url(url)] = token
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # Create the file private from the start: never world-readable, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(creds, f, indent=2, sort_keys=True)
    os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR)
    os.replace(tmp, path)
    return path


def forget_token(url: str) -> bool:
    creds = _read_credentials()
    if creds.pop(normalize_url(url), None) is None:
        return False
    path = credentials_path()
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(creds, f, indent=2, sort_keys=True)
    return True


def token_for(url: str) -> str | None:
    """``ENVHUB_TOKEN``, or the token stored for ``url`` by ``envhub login``."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    return _read_credentials().get(normalize_url(url.removeprefix("static+")))


# --- opening a registry --------------------------------------------------------------------------


def open_registry(location: str, *, token: str | None = None, writable: bool = False) -> Registry:
    """The registry at ``location`` (see the module docstring).

    A folder is opened as the local registry layout when ``writable`` (publishing into it), and as a
    read-only static registry otherwise.
    """
    from envhub.registry.local import LocalRegistry
    from envhub.registry.static import StaticRegistry

    if is_url(location):
        from envhub.registry.http import HubRegistry, StaticHttpRegistry, probe_hub

        if location.startswith("static+"):
            return StaticHttpRegistry(location.removeprefix("static+"))
        url = normalize_url(location)
        if probe_hub(url):
            return HubRegistry(url, token=token if token is not None else token_for(url))
        return StaticHttpRegistry(url)
    folder = Path(location.removeprefix("file://")).expanduser()
    if writable:
        return LocalRegistry(folder)
    if not (folder / "registry.json").is_file():
        raise RegistryError(
            f"{folder} holds no registry.json",
            hint="point --registry at a folder written by `envhub export-static`, or at a hub URL",
        )
    return StaticRegistry(folder)
