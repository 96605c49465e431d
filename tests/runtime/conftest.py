"""Runtime tests: the process runtime always; the docker runtime where an engine answers.

Docker tests are marked ``docker``. Without an engine they skip with the reason, except under CI
(``CI=true``), where they fail with it: CI must run them (``bash scripts/setup-docker.sh`` first).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL_BASE_IMAGE = "envhub-base:bookworm"


@pytest.fixture(scope="session")
def docker_engine():
    from envhub.errors import DockerUnavailableError

    try:
        from envhub.runtime.images import docker_client

        client = docker_client()
    except DockerUnavailableError as exc:
        reason = f"{exc} ({exc.hint})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"docker tests must run in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    # The local base image of scripts/setup-docker.sh, when it is here and none was chosen.
    if not os.environ.get("ENVHUB_BASE_IMAGE"):
        try:
            client.images.get(LOCAL_BASE_IMAGE)
            os.environ["ENVHUB_BASE_IMAGE"] = LOCAL_BASE_IMAGE
        except Exception:  # noqa: BLE001 - absent: the default base image applies
            pass
    return client


@pytest.fixture(autouse=True)
def _close_pools():
    yield
    from envhub.runtime.remote import _pools, close_all_pools

    close_all_pools()
    _pools.clear()
