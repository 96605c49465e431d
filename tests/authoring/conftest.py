"""The import tests run environments in the process and docker runtimes: they share the runtime
tests' fixtures (the docker engine, and closing the pooled servers after each test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_runtime_fixtures", Path(__file__).parents[1] / "runtime" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_runtime = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_runtime)

docker_engine = _runtime.docker_engine
_close_pools = _runtime._close_pools


# --- OpenEnv servers written with openenv's own classes (helpers in openenv_servers.py) -----------

import pytest  # noqa: E402

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
