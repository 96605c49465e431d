"""OpenEnv servers for the import tests: the environments of tests/fixtures/openenv_reverse (written
with openenv's own server classes) under uvicorn, `envhub serve`, and the fixture's OpenEnv image."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from loopback import serve

OPENENV_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openenv_reverse"


def serve_openenv(app: str):
    """OpenEnv's server for ``server:<app>`` under uvicorn in a child process on a loopback port."""
    cmd = [sys.executable, "-m", "uvicorn", f"server:{app}", "--app-dir", str(OPENENV_FIXTURE), "--log-level", "warning"]
    return serve_command(cmd)


def serve_command(cmd: list[str], *, home: Path | None = None):
    """``cmd --host 127.0.0.1 --port P`` (a server) in a child process, until it answers /health
    (:func:`loopback.serve`)."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **({"ENVHUB_HOME": str(home)} if home else {})}
    return serve(cmd, env=env, timeout_s=90, poll_s=0.2)


def build_openenv_image(client, app: str = "app") -> str:
    """The fixture's OpenEnv image, built offline from envhub's base image (reused when built)."""
    import hashlib
    import shutil
    import tempfile

    from envhub.runtime.images import base_image, gather_wheels

    base = base_image()
    dockerfile = (OPENENV_FIXTURE / "Dockerfile").read_text().replace("{base}", base).replace("{app}", app)
    key = hashlib.sha256((dockerfile + (OPENENV_FIXTURE / "server.py").read_text()).encode()).hexdigest()[:12]
    tag = f"envhub-test/openenv-{app.replace('_', '-')}:{key}"
    with contextlib.suppress(Exception):
        client.images.get(tag)
        return tag
    with tempfile.TemporaryDirectory(prefix="envhub-openenv-image-") as tmp:
        context = Path(tmp)
        gather_wheels(["openenv==0.10.0"], context / "wheels", log=lambda line: None)
        shutil.copy(OPENENV_FIXTURE / "server.py", context / "server.py")
        (context / "Dockerfile").write_text(dockerfile)
        client.images.build(path=str(context), tag=tag, network_mode="none", pull=False, rm=True, forcerm=True)
    return tag
