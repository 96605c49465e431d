"""An envhub environment as an OpenEnv package: what ``openenv validate`` and ``openenv push`` read.

:func:`export_openenv` writes a folder beside nothing else, ready for OpenEnv's CLI::

    openenv.yaml            OpenEnv's manifest; its ``validation:`` block from envhub.toml and the rubric
    Dockerfile              the image: envhub's session server on port 8000, which speaks OpenEnv
    server/app.py           the same server for ``uvicorn server.app:app`` and ``python -m server.app``
    client.py, __init__.py  a typed OpenEnv client for the environment (``EnvhubChatEnv``)
    pyproject.toml          the server's pinned requirements, with openenv for the client
    requirements.txt        what the image installs (the docker runtime's own pinned set)
    validation/runtime.json OpenEnv's runtime plan: a seeded reset and neutral turns to the end
    env/                    the environment's artifact, unpacked (its digest is in openenv.yaml)
    vendor/envhub/          envhub's own code, as the docker runtime's images carry it
    README.md               the environment's README

Nothing of the environment runs here: the manifest and the artifact's files are read, never
imported, so an untrusted environment can be exported as safely as it can be downloaded.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

from envhub.errors import ArtifactError, DigestMismatchError
from envhub.identity.artifact import pack_bytes, sha256_digest, unpack
from envhub.identity.manifest import Manifest, load_manifest
from envhub.runtime.images import DEFAULT_BASE_IMAGE, ENVHUB_SOURCE, server_requirements

__all__ = ["OPENENV_PORT", "OPENENV_REQUIREMENT", "export_openenv", "openenv_manifest"]

#: The port OpenEnv's images serve on (its template, ``openenv push``'s Space, its validator).
OPENENV_PORT = 8000
#: The openenv release whose protocol ``envhub serve`` speaks, required by the exported client.
OPENENV_REQUIREMENT = "openenv==0.10.0"
#: Declared where the manifest says nothing: OpenEnv's policy bounds ``floor_margin`` from below
#: at 0.1, and ``disk_mb`` is what the server writes (nothing but /tmp).
FLOOR_MARGIN = 0.1
DISK_MB = 512
#: A judged rubric's variance, declared within OpenEnv's policy bound (0.2).
JUDGE_VARIANCE = 0.1
#: The neutral turn the runtime plan sends until the episode ends.
PLAN_TURN = "I am not sure."


def openenv_manifest(manifest: Manifest, digest: str) -> dict[str, Any]:
    """``openenv.yaml`` for ``manifest`` (schema 2: with the ``execution`` declaration).

    The reward is the rubric's total, in [0, 1]; resources are the manifest's ``[limits]``, the
    episode budget one step timeout for the reset and each turn; the network is closed unless an
    LLM judge must be reached; the task distribution is pinned by the artifact's digest.
    """
    limits = manifest.limits
    judged = manifest.rubric.judge
    reward: dict[str, Any] = {"range": [0.0, 1.0], "oracle_tolerance": 0.0, "floor_margin": FLOOR_MARGIN}
    validation: dict[str, Any] = {
        "reward": reward,
        "resources": {
            "cpu": limits.cpus,
            "memory_mb": limits.memory_mb,
            "disk_mb": DISK_MB,
            "episode_timeout_s": min(3600.0, limits.step_timeout_s * (manifest.max_turns + 1)),
        },
        "network": {"mode": "public" if judged else "no-network"},
        "capabilities": {"verifier": {"kind": "reward_channel"}, "llm_judged": judged},
        "task_distribution": {"dataset_version": digest},
        "types": {"tags": list(manifest.tags) or [manifest.name]},
        "execution": {"kind": "openenv_ws", "probe_path": "validation/runtime.json", "dockerfile": "Dockerfile", "context": "."},
    }
    if judged:
        # envhub's judge is chosen where the environment runs (ENVHUB_JUDGE_MODEL, _BASE_URL), and
        # its model is part of the rubric hash every score records; the pin names where it comes from.
        reward["variance_tolerance"] = JUDGE_VARIANCE
        validation["judge"] = {"model": "$ENVHUB_JUDGE_MODEL", "version": "recorded in each score's rubric hash",
                               "params": {"base_url": "$ENVHUB_JUDGE_BASE_URL"}}
    return {
        "spec_version": 1,
        "name": manifest.name,
        "version": manifest.version,
        "description": manifest.description,
        "type": "space",
        "runtime": "fastapi",
        "app": "server.app:app",
        "port": OPENENV_PORT,
        "envhub": {"ref": manifest.ref, "digest": digest, "rubric": manifest.rubric.summary, "license": manifest.license},
        "validation": validation,
    }


def runtime_plan(manifest: Manifest) -> dict[str, Any]:
    """OpenEnv's runtime plan: a seeded reset, then neutral turns until ``max_turns`` ends the episode."""
    turns = min(manifest.max_turns, 100)  # OpenEnv's plans hold at most 100 actions
    return {
        "plan_schema_version": "1",
        "reset": {"episode_id": "openenv-validation", "seed": 0, "options": {}},
        "actions": [{"message": PLAN_TURN} for _ in range(turns)],
    }


def export_openenv(folder: str | Path, out: str | Path, *, digest: str | None = None, overwrite: bool = False) -> Path:
    """Write the OpenEnv package of the environment in ``folder`` into ``out``; returns ``out``.

    ``digest`` is the artifact digest the folder must have (a registry's); it is checked.
    """
    import yaml

    folder, out = Path(folder), Path(out)
    manifest = load_manifest(folder)
    data = pack_bytes(folder)
    actual = sha256_digest(data)
    if digest is not None and actual != digest:
        raise DigestMismatchError(f"{manifest.ref} at {folder}", digest, actual)
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise ArtifactError(f"{out} exists and is not empty", hint="choose another --out, or pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    unpack(data, out / "env", expected_digest=actual)
    shutil.copytree(ENVHUB_SOURCE, out / "vendor" / "envhub", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    requirements = server_requirements(manifest)
    files = {
        "openenv.yaml": yaml.safe_dump(openenv_manifest(manifest, actual), sort_keys=False, allow_unicode=True),
        "Dockerfile": _dockerfile(actual),
        "requirements.txt": "\n".join(requirements) + "\n",
        "pyproject.toml": _pyproject(manifest, requirements),
        "server/__init__.py": "",
        "server/app.py": _SERVER_APP.format(ref=manifest.ref, digest=actual, port=OPENENV_PORT),
        "client.py": _CLIENT.format(ref=manifest.ref),
        "__init__.py": f'"""{manifest.ref} as an OpenEnv environment."""\n\nfrom .client import EnvhubChatEnv\n\n__all__ = ["EnvhubChatEnv"]\n',
        "validation/runtime.json": _json_text(runtime_plan(manifest)),
        "README.md": _readme(folder, manifest, actual),
        "outputs/.gitkeep": "",
    }
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return out


def _json_text(value: Any) -> str:
    import json

    return json.dumps(value, indent=2) + "\n"


def _dockerfile(digest: str) -> str:
    return textwrap.dedent(
        f"""\
        # envhub's session server, which speaks OpenEnv's protocol, on port {OPENENV_PORT}.
        # Written by `envhub export openenv`; the environment is env/ (artifact {digest}).
        ARG BASE_IMAGE={DEFAULT_BASE_IMAGE}
        FROM ${{BASE_IMAGE}}
        WORKDIR /app
        COPY requirements.txt /app/requirements.txt
        RUN python -m pip install --no-cache-dir --disable-pip-version-check -r /app/requirements.txt
        COPY . /app
        ENV PYTHONPATH=/app/vendor PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \\
            OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
        USER 10001:10001
        EXPOSE {OPENENV_PORT}
        HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \\
            CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{OPENENV_PORT}/health')"
        CMD ["python", "-m", "envhub.runtime.server", "/app/env", "--host", "0.0.0.0", "--port", "{OPENENV_PORT}", "--digest", "{digest}"]
        """
    )


def _pyproject(manifest: Manifest, requirements: list[str]) -> str:
    deps = "".join(f"    {_toml_str(req)},\n" for req in [*requirements, OPENENV_REQUIREMENT])
    return (
        "# Written by `envhub export openenv`: the server's pinned requirements, and openenv for client.py.\n"
        "[project]\n"
        f'name = "openenv-{manifest.name}"\n'
        f'version = "{manifest.version}"\n'
        f"description = {_toml_str(manifest.description)}\n"
        f'requires-python = "{manifest.python}"\n'
        f"license = {{ text = {_toml_str(manifest.license)} }}\n"
        f"dependencies = [\n{deps}]\n\n"
        "[project.scripts]\n"
        'server = "server.app:main"\n'
    )


def _toml_str(text: str) -> str:
    import json

    return json.dumps(text)  # a JSON string is a TOML basic string


def _readme(folder: Path, manifest: Manifest, digest: str) -> str:
    own = folder / "README.md"
    body = own.read_text(encoding="utf-8") if own.is_file() else f"# {manifest.name}\n\n{manifest.description}\n"
    return body.rstrip("\n") + textwrap.dedent(
        f"""

        ## As an OpenEnv environment

        This folder was written by `envhub export openenv` from {manifest.ref} ({digest}). The
        image runs envhub's session server, which speaks OpenEnv's protocol on port {OPENENV_PORT}
        (`/ws`, `/reset`, `/step`, `/state`, `/schema`, `/metadata`, `/health`, `/mcp`). An action is
        `{{"message": "<the assistant's text>"}}`; an observation's `messages` are the environment's
        answer; the reward of the last step is the rubric's total, its breakdown in `metadata["rubric"]`.

        ```python
        from openenv.core import GenericEnvClient

        with GenericEnvClient(base_url="http://localhost:{OPENENV_PORT}").sync() as env:
            result = env.reset(seed=0)
            result = env.step({{"message": "..."}})
        ```
        """
    )


_SERVER_APP = '''\
"""The OpenEnv entry point of {ref}: envhub's session server, which speaks OpenEnv's protocol.

    uvicorn server.app:app --host 0.0.0.0 --port {port}      # or: python -m server.app
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / "env"
DIGEST = "{digest}"
sys.path.insert(0, str(ROOT / "vendor"))  # envhub itself, as the image carries it


def __getattr__(name: str):
    if name == "app":  # built when uvicorn asks for it, not when main() runs the server
        from envhub.runtime.server import SessionServer

        return SessionServer(ENV, digest=DIGEST).app
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> int:
    from envhub.runtime.server.__main__ import main as serve

    args = list(sys.argv[1:] if argv is None else argv)
    if "--host" not in args:
        args += ["--host", "0.0.0.0"]
    if "--port" not in args:
        args += ["--port", "{port}"]
    return serve([str(ENV), "--digest", DIGEST, *args])


if __name__ == "__main__":
    sys.exit(main())
'''

_CLIENT = '''\
"""An OpenEnv client for {ref}, served by envhub's session server.

    from client import EnvhubChatEnv

    with EnvhubChatEnv(base_url="http://localhost:8000").sync() as env:
        result = env.reset(seed=0)                  # result.observation["messages"]: the first messages
        result = env.step("the assistant's reply")  # or {{"message": ...}}
        result.reward, result.done, result.metadata.get("rubric")
"""

from __future__ import annotations

from typing import Any

from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient


class EnvhubChatEnv(EnvClient[Any, dict, dict]):
    """Actions are the assistant's text; observations and states are envhub's, as dicts."""

    def _step_payload(self, action: Any) -> dict[str, Any]:
        return {{"message": action}} if isinstance(action, str) else dict(action)

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[dict]:
        return StepResult(
            observation=payload.get("observation", {{}}),
            reward=payload.get("reward"),
            done=payload.get("done", False),
            metadata=payload.get("metadata"),
        )

    def _parse_state(self, payload: dict[str, Any]) -> dict:
        return payload
'''
