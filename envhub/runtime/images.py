"""``envhub build``: an environment's artifact as a Docker image that serves it, built without network.

The image is ``ENVHUB_BASE_IMAGE`` (default ``python:3.11-slim``; ``scripts/setup-docker.sh`` makes a
local Debian one) plus a virtual environment with envhub's server dependencies and the environment's
own ``dependencies``, installed with ``pip --no-index`` from binary wheels that pip downloaded on
this machine (cached in ``~/.cache/envhub/wheels``), envhub's own package, and the unpacked
artifact at ``/env``. The build runs with ``network_mode="none"``. The image is tagged
``envhub/<namespace>.<name>:<version>-<digest12>``, labelled with the identity and the artifact
digest, runs as a non-root user, and its entrypoint is ``python -m envhub.runtime.server /env``.

Nothing the environment supplies runs on the host: its ``dependencies`` are names and version
specifiers only (the manifest refuses URLs, paths and pip options), the host fetches binary wheels
only (``--only-binary :all:``: no sdist's build backend runs), and each build copies its own
closure of hash-checked wheels into its context.

A second build of the same artifact reuses the image. Versions in the local registry get the image
reference and id recorded in their index entry.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envhub.identity.artifact import file_digest, pack_bytes, sha256_digest, unpack
from envhub.errors import DigestMismatchError, DockerUnavailableError, ImageBuildError
from envhub.identity.manifest import Manifest, load_manifest

#: The envhub package copied into every image (this installation's own code).
ENVHUB_SOURCE = Path(__file__).resolve().parents[1]
BASE_IMAGE_ENV = "ENVHUB_BASE_IMAGE"
DEFAULT_BASE_IMAGE = "python:3.11-slim"
#: The user the server runs as inside the container (no such user needs to exist in the image).
CONTAINER_USER = "10001:10001"
SOCKET_DIR = "/run/envhub"
LABEL = "org.envhub"
#: envhub's dependencies the server does not import; left out of images unless the env needs them.
NOT_IN_IMAGE = {"datasets"}


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    digest: str
    reused: bool


def base_image() -> str:
    return os.environ.get(BASE_IMAGE_ENV) or DEFAULT_BASE_IMAGE


def docker_client() -> Any:
    """A docker SDK client on a live engine, or :class:`DockerUnavailableError` saying why not."""
    try:
        import docker
    except ImportError:
        raise DockerUnavailableError("the docker SDK is not installed (pip install 'envhub[docker]')") from None
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # DockerException, connection refused, missing socket
        raise DockerUnavailableError(f"no Docker engine answers ({type(exc).__name__}: {exc})") from None
    return client


def image_tag(manifest: Manifest, digest: str) -> str:
    version = re.sub(r"[^A-Za-z0-9_.-]", "_", manifest.version)
    return f"envhub/{manifest.namespace}.{manifest.name}:{version}-{digest.removeprefix('sha256:')[:12]}"


def labels_for(manifest: Manifest, digest: str) -> dict[str, str]:
    from envhub.runtime.server.protocol import PROTOCOL_VERSION

    return {
        f"{LABEL}.ref": manifest.ref,
        f"{LABEL}.namespace": manifest.namespace,
        f"{LABEL}.name": manifest.name,
        f"{LABEL}.version": manifest.version,
        f"{LABEL}.digest": digest,
        f"{LABEL}.protocol": str(PROTOCOL_VERSION),
        f"{LABEL}.envhub-version": importlib.metadata.version("envhub"),
    }


def find_image(client: Any, manifest: Manifest, digest: str, *, key: str | None = None) -> Any | None:
    """The image already built for this artifact (and this build ``key``, when given), or None."""
    import docker.errors

    try:
        image = client.images.get(image_tag(manifest, digest))
    except docker.errors.ImageNotFound:
        return None
    labels = image.labels or {}
    if labels.get(f"{LABEL}.digest") != digest or (key is not None and labels.get(f"{LABEL}.build-key") != key):
        return None
    return image


def server_requirements(manifest: Manifest) -> list[str]:
    """envhub's runtime dependencies (and its ``serve`` extra, where installed) pinned to the versions
    installed here, plus the environment's own ``dependencies``."""
    pinned = []
    for requirement in importlib.metadata.requires("envhub") or []:
        spec, _, marker = requirement.partition(";")
        name = re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0]
        optional = 'extra == "serve"' in marker.replace("'", '"')
        if marker and not optional:  # other extras, and markers of other Pythons
            continue
        if name.lower() in NOT_IN_IMAGE and manifest.dataset.kind != "hf":
            continue
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if not optional:
                pinned.append(spec.strip())
    return pinned + list(manifest.dependencies)


def build_key(base: str, requirements: list[str], client: Any) -> str:
    """What decides an image's contents besides the artifact: base image, requirements, envhub's code.

    Stored as a label; an image whose key differs is rebuilt, so a changed server is never stale.
    """
    import docker.errors

    h = hashlib.sha256()
    try:
        h.update(client.images.get(base).id.encode())
    except docker.errors.ImageNotFound:
        h.update(base.encode())
    h.update(DOCKERFILE.encode())
    h.update("\n".join(requirements).encode())
    source = ENVHUB_SOURCE
    for path in sorted(source.rglob("*.py")):
        h.update(str(path.relative_to(source)).encode())
        h.update(path.read_bytes())
    return "sha256:" + h.hexdigest()


def wheelhouse() -> Path:
    """Where wheels downloaded for builds are cached: ``$ENVHUB_WHEELHOUSE``, else ``~/.cache/envhub/wheels``.

    Outside ``$ENVHUB_HOME`` on purpose: it is a cache of public packages, shared by every registry home.
    (Not the ``wheelhouse`` folder of earlier versions, which also held wheels built on the host.)
    """
    override = os.environ.get("ENVHUB_WHEELHOUSE")
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "envhub" / "wheels"


#: Beside the wheelhouse's wheels: the sha256 each had when pip saved it, one file per wheel.
HASHES_DIR = ".sha256"


def _wheels(folder: Path) -> set[str]:
    return {path.name for path in folder.glob("*.whl")}


def _pip_wheel(args: list[str]) -> subprocess.CompletedProcess[str]:
    # --only-binary: pip never builds a source distribution, so no build backend runs on this machine.
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--only-binary", ":all:", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _record_hashes(house: Path, names: set[str]) -> None:
    hashes = house / HASHES_DIR
    hashes.mkdir(exist_ok=True)
    for name in names:
        (hashes / name).write_text(file_digest(house / name) + "\n")


def _check_recorded(house: Path, wheels: Path) -> None:
    """Every wheel in this build's folder is one pip saved into the wheelhouse, unchanged since."""
    for path in sorted(wheels.glob("*.whl")):
        try:
            recorded = (house / HASHES_DIR / path.name).read_text().strip()
        except FileNotFoundError:
            recorded = None
        actual = file_digest(path)
        if recorded != actual:
            path.unlink()
            why = "was not downloaded by pip for a build" if recorded is None else f"changed since pip saved it ({recorded})"
            raise ImageBuildError(
                "wheels",
                f"{path.name} in the wheelhouse {house} {why}; it is not installed",
                log=f"remove {house / path.name} (or the whole wheelhouse) and build again",
            )


def gather_wheels(requirements: list[str], dest: Path, *, log: Callable[[str], None]) -> None:
    """Binary wheels for ``requirements`` (and their dependencies) into ``dest``, this build's own folder.

    Only published wheels are fetched: a requirement with no wheel for this Python fails the build,
    because building its sdist would run its author's code here, outside any container. Downloads
    are cached in the wheelhouse with the sha256 pip saved them with; each build takes exactly the
    closure of its requirements from there and refuses a wheel whose hash is not the recorded one,
    so nothing placed in the wheelhouse by other means (or an earlier build) reaches an image.
    """
    house = wheelhouse()
    house.mkdir(parents=True, exist_ok=True)
    before = _wheels(house)
    links = ["--find-links", str(house), "--wheel-dir", str(house)]
    # Offline from the wheelhouse first; only what is missing goes to the package index.
    if _pip_wheel(["--no-index", *links, *requirements]).returncode != 0:
        log("downloading wheels with pip (the first build of these dependencies)")
        online = _pip_wheel([*links, *requirements])
        if online.returncode != 0:
            raise ImageBuildError(
                "wheels",
                "pip found no binary wheel for some of " + " ".join(requirements)
                + " (builds install published wheels only, and never build a source distribution on this machine)",
                log=online.stderr[-4000:],
            )
    _record_hashes(house, _wheels(house) - before)
    # Copy exactly the closure of the requirements: resolve again offline into the build context.
    dest.mkdir(parents=True, exist_ok=True)
    final = _pip_wheel(["--no-index", "--find-links", str(house), "--wheel-dir", str(dest), *requirements])
    if final.returncode != 0:
        raise ImageBuildError("wheels", "pip wheel from the wheelhouse failed", log=final.stderr[-4000:])
    _check_recorded(house, dest)
    (dest / "requirements.txt").write_text("\n".join(requirements) + "\n")


DOCKERFILE = """\
FROM {base}
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/envhub \\
 && /opt/envhub/bin/pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \\
      --find-links /tmp/wheels -r /tmp/wheels/requirements.txt \\
 && rm -rf /tmp/wheels
COPY envhub-src /opt/envhub-src
COPY env /env
RUN /opt/envhub/bin/python -m compileall -q /opt/envhub-src /env /opt/envhub/lib || true
ENV PYTHONPATH=/opt/envhub-src PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \\
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
USER {user}
ENTRYPOINT ["/opt/envhub/bin/python", "-m", "envhub.runtime.server", "/env", "--uds", "{socket}", "--digest", "{digest}"]
"""


def _copy_envhub_package(dest: Path) -> None:
    source = ENVHUB_SOURCE
    shutil.copytree(source, dest / "envhub", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_image(
    folder: str | Path,
    *,
    digest: str | None = None,
    base: str | None = None,
    client: Any = None,
    force: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> BuiltImage:
    """Build (or reuse) the image serving the environment in ``folder``.

    ``digest`` is the artifact digest the folder must have (a registry's); it is checked. ``log``
    receives progress lines.
    """
    import docker.errors

    folder = Path(folder)
    manifest = load_manifest(folder)
    data = pack_bytes(folder)
    actual = sha256_digest(data)
    if digest is not None and actual != digest:
        raise DigestMismatchError(f"{manifest.ref} at {folder}", digest, actual)
    digest = actual
    client = client or docker_client()
    tag = image_tag(manifest, digest)
    base = base or base_image()
    requirements = server_requirements(manifest)
    key = build_key(base, requirements, client)
    if not force:
        existing = find_image(client, manifest, digest, key=key)
        if existing is not None:
            return BuiltImage(tag, existing.id, digest, reused=True)
    try:
        stale = client.images.get(tag).id  # built by another envhub or from another base: replaced below
    except docker.errors.ImageNotFound:
        stale = None
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        raise ImageBuildError(
            manifest.ref,
            f"the base image {base} is not on this machine (builds run without network, so it is not pulled)",
            log="run `eval \"$(bash scripts/setup-docker.sh)\"` for a local base image, or `docker pull " + base + "`",
        ) from None
    with tempfile.TemporaryDirectory(prefix="envhub-build-") as tmp:
        context = Path(tmp)
        unpack(data, context / "env", expected_digest=digest)
        log(f"gathering wheels for {manifest.ref}")
        gather_wheels(requirements, context / "wheels", log=log)
        _copy_envhub_package(context / "envhub-src")
        dockerfile = DOCKERFILE.format(base=base, user=CONTAINER_USER, socket=f"{SOCKET_DIR}/env.sock", digest=digest)
        (context / "Dockerfile").write_text(dockerfile)
        log(f"building {tag} from {base} (no network)")
        try:
            image, _ = client.images.build(
                path=str(context),
                tag=tag,
                labels={**labels_for(manifest, digest), f"{LABEL}.build-key": key},
                network_mode="none",
                pull=False,
                rm=True,
                forcerm=True,
            )
        except docker.errors.BuildError as exc:
            lines = [str(item.get("stream") or item.get("error") or "").rstrip() for item in exc.build_log]
            raise ImageBuildError(manifest.ref, str(exc), log="\n".join(line for line in lines if line)[-4000:]) from None
        except docker.errors.APIError as exc:
            raise ImageBuildError(manifest.ref, f"the Docker engine refused the build: {exc}") from None
    if stale and stale != image.id:
        try:
            client.images.remove(stale, noprune=False)
        except docker.errors.APIError:  # still used by a running container: the engine keeps it
            pass
    return BuiltImage(tag, image.id, digest, reused=False)


def record_image(manifest: Manifest, built: BuiltImage, *, home: str | Path | None = None) -> bool:
    """Write the image into the local registry's entry for this version; False when it is not there."""
    from envhub.registry import LocalRegistry

    registry = LocalRegistry(home)
    return registry.set_image(manifest.full_name, manifest.version, digest=built.digest, image=built.tag,
                              image_digest=built.image_id)
