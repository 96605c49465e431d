"""The import tests run environments in the process and docker runtimes: they share the runtime
tests' fixtures (the docker engine, and closing the pooled servers after each test). The audit tests
write environments of one module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("_runtime_fixtures", Path(__file__).parents[1] / "runtime" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_runtime = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_runtime)

docker_engine = _runtime.docker_engine
_close_pools = _runtime._close_pools


@pytest.fixture
def one_module_env(tmp_path):
    """``one_module_env(name, module, source, more_toml="")``: a folder ``tmp_path/name`` holding
    ``module.py`` (``source``, with a ``make_env``) and an envhub.toml for it at version 0.1.0."""

    def write(name: str, module: str, source: str, more_toml: str = "") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / f"{module}.py").write_text(source)
        (folder / "envhub.toml").write_text(f'name = "{name}"\nversion = "0.1.0"\nentrypoint = "{module}:make_env"\n{more_toml}')
        return folder

    return write


# --- OpenEnv servers written with openenv's own classes (helpers in openenv_servers.py) -----------

from openenv_servers import serve_openenv  # noqa: E402


@pytest.fixture(scope="session")
def reverse_url():
    pytest.importorskip("openenv.core", reason="the `interop` extra (openenv) is not installed")
    with serve_openenv("app") as url:
        yield url


@pytest.fixture(scope="session")
def sum_url():
    pytest.importorskip("openenv.core", reason="the `interop` extra (openenv) is not installed")
    with serve_openenv("sum_app") as url:
        yield url
