"""From an id or a folder to an environment version on this machine, without importing its code.

``locate`` accepts a folder path, a bundled name (``arithmetic``) or ``namespace/name@version``. Ids
are looked up in the local registry first, then among the bundled environments; an active
``envhub.lock`` pins the version and the digest. A local-registry folder is checked against its
install record first (:class:`~envhub.errors.InstalledTreeChangedError` names what changed).

What neither has is asked of the configured registry (``--registry``'s choice: ``ENVHUB_REGISTRY``
or ``registry`` in the config file, as ``envhub login URL --default`` writes it), pulled as
``envhub pull`` pulls (checked against its digest, then installed) and found locally; whether its
code may then run on this machine is :mod:`envhub.runtime.trust`'s question. The configured
registry is asked only for what this machine lacks: ``envhub pull`` updates what it has. Where
nothing is configured, or the registry cannot be asked, the error names the pull command to run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from envhub.errors import BareNameError, EnvhubError, EnvNotFoundError, ManifestError, RegistryError, VersionNotFoundError
from envhub.identity.ids import EnvId, parse_env_id
from envhub.identity.manifest import MANIFEST_FILE, Manifest, load_manifest
from envhub.registry import LocalRegistry, bundled_registry
from envhub.registry.config import configured_registry, open_registry
from envhub.registry.lockfile import active_lockfile, check_installed, pin
from envhub.registry.pulling import pull

__all__ = ["Located", "locate"]


@dataclass(frozen=True)
class Located:
    """Where an environment version lives on this machine."""

    folder: Path
    manifest: Manifest
    digest: str | None  # None for a plain folder: computed lazily from its contents
    registry: str  # "folder", "local" or "bundled"
    origin: str = ""  # for "local": the install record's origin (published, bundled, pulled, unknown)
    source: str = ""  # for "local": the folder it was published from, or the registry it was pulled from


def _looks_like_path(text: str) -> bool:
    # `namespace/name` also has one slash: only a folder with a manifest, or an explicit path, is a path.
    return (Path(text) / MANIFEST_FILE).is_file() or text.startswith((".", "/", "~")) or text.count("/") > 1


def locate(id_or_path: str | os.PathLike) -> Located:
    """Find an environment version on this machine without importing it, pulling it first from the
    configured registry where this machine lacks it (see the module docstring)."""
    text = os.fspath(id_or_path)
    if isinstance(id_or_path, os.PathLike) or _looks_like_path(text):
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise ManifestError(text, ["no such folder"])
        return Located(folder, load_manifest(folder), None, "folder")
    env_id = parse_env_id(text)
    lock = active_lockfile()  # envhub.lock pins the version and the digest
    if lock is not None:
        env_id = pin(env_id, lock[1], lock[0])
    errors: list[EnvhubError] = []
    located = _on_this_machine(env_id, lock, errors)
    asked = configured_registry() if located is None else None
    if asked is not None and _pull_from(asked, env_id, errors):
        located = _on_this_machine(env_id, lock, errors)
    if located is None:
        raise _most_specific(env_id, errors, asked=asked)
    return located


def _on_this_machine(env_id: EnvId, lock: tuple | None, errors: list[EnvhubError]) -> Located | None:
    """The version in the local registry, else among the bundled environments; misses go to ``errors``."""
    local = LocalRegistry()
    bundled = bundled_registry()
    for registry, label in ((local, "local"), (bundled, "bundled")):
        if registry is None:
            continue
        try:
            entry, version = registry.resolve(env_id)
        except (EnvNotFoundError, VersionNotFoundError) as exc:
            errors.append(exc)
            continue
        origin = source = ""
        if registry is local:  # an installed folder must still be its artifact, so its digest is true
            record = local.verify_installed(entry, version)
            origin, source = record.origin, record.source
        folder = registry.folder(entry, version)
        if folder is None:  # a bundled index that points at archives, not folders
            raise EnvNotFoundError(str(env_id), where=registry.description)
        if lock is not None:
            check_installed(registry, entry, version, lock[1], lock[0])
        return Located(folder, load_manifest(folder), version.digest, label, origin, source)
    return None


def _pull_from(location: str, env_id: EnvId, errors: list[EnvhubError]) -> bool:
    """Pull ``env_id`` from the registry at ``location`` into the local one; False when it does not
    have it (its answer goes first in ``errors``). Digest mismatches and refusals propagate."""
    try:
        pull(str(env_id), source=open_registry(location))
    except BareNameError:
        raise  # its candidates are the answer: a bare name is never guessed
    except (EnvNotFoundError, VersionNotFoundError) as exc:
        errors.insert(0, exc)
        return False
    except RegistryError as exc:  # unreachable, or not a registry
        raise RegistryError(
            f"`{env_id}` is not on this machine, and the configured registry {location} could not be asked for it: {exc}",
            hint=f"`envhub pull {env_id} --registry {location}` once it answers, or pass another --registry",
        ) from exc
    return True


def _most_specific(env_id: EnvId, errors: list[EnvhubError], *, asked: str | None) -> EnvhubError:
    """A missing version beats a missing name (the configured registry's answer first); missing names
    merge their suggestions and say what would fetch the environment."""
    for exc in errors:
        if isinstance(exc, VersionNotFoundError):
            return exc
    suggestions = sorted({s for exc in errors for s in getattr(exc, "suggestions", [])})
    name = str(EnvId(env_id.namespace, env_id.name))
    if asked is not None:
        where = f"the local registry, the bundled environments or {asked}"
        private = asked.startswith(("http://", "https://"))  # a hub answers 404 for what the token may not see
        step = f"If it is private, `envhub login {asked} --default` with a token that may see it." if private else ""
    else:
        where = "the local registry or the bundled environments"
        # a bare name is only ever bundled or the user's own (envhub.registry.names): nothing to pull
        step = f"Fetch it with `envhub pull {env_id} --registry URL` (a hub or static registry that has it)." if env_id.namespace else ""
    return EnvNotFoundError(name, where=where, available=suggestions, next_step=step)
