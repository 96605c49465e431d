"""The docker runtime: images built without network, locked-down containers, faults, cleanup."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gymnasium.utils.env_checker import check_env

import envhub
from envhub.runtime.client import RemoteEnv
from envhub.runtime.images import LABEL, build_image, image_tag
from envhub.errors import EnvironmentFailure, RuntimeDiedError, StepTimeoutError
from envhub.registry import LocalRegistry
from envhub.runtime.remote import pool_for

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
ARITHMETIC = ROOT / "environments" / "arithmetic"
FAULTY = ROOT / "tests" / "fixtures" / "faulty"


def test_build_labels_reuse_and_registry_record(docker_engine, envhub_home):
    registry = LocalRegistry(envhub_home)
    version, _ = registry.publish(ARITHMETIC)
    built = build_image(ARITHMETIC, client=docker_engine)
    assert built.digest == version.digest
    image = docker_engine.images.get(built.tag)
    assert image.labels[f"{LABEL}.digest"] == version.digest
    assert image.labels[f"{LABEL}.ref"] == "envhub/arithmetic@1.3.0"
    assert image.attrs["Config"]["User"] == "10001:10001"
    again = build_image(ARITHMETIC, client=docker_engine)
    assert again.reused and again.image_id == built.image_id
    # Through the CLI path: a version of the local registry gets its image recorded.
    from typer.testing import CliRunner

    from envhub.cli import build_app

    result = CliRunner().invoke(build_app(), ["build", "envhub/arithmetic@1.3.0"])
    assert result.exit_code == 0, result.output
    entry = registry.index().environments["envhub/arithmetic"].versions["1.3.0"]
    assert entry.image == image_tag(envhub.load_manifest(ARITHMETIC), version.digest)
    assert entry.image_digest == built.image_id


def test_docker_env_keeps_the_contract_in_a_locked_down_container(docker_engine):
    remote = envhub.make(ARITHMETIC, runtime="docker", level="medium")
    local = envhub.make(ARITHMETIC, level="medium")
    assert isinstance(remote, RemoteEnv)
    assert remote.identity.to_dict() == local.identity.to_dict()
    assert remote.rubric.hash == local.rubric.hash
    for seed in range(3):
        assert remote.reset(seed=seed) == local.reset(seed=seed)
        assert remote.step("<answer>12</answer>") == local.step("<answer>12</answer>")
    check_env(remote, skip_render_check=True)

    (server,) = pool_for("docker", envhub.locate(ARITHMETIC)).servers
    attrs = docker_engine.containers.get(server.container.id).attrs
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 256 * 2**20 and host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 128
    assert attrs["Config"]["User"] == "10001:10001"
    remote.close()
    pool_for("docker", envhub.locate(ARITHMETIC)).close()
    import docker.errors

    with pytest.raises(docker.errors.NotFound):
        docker_engine.containers.get(server.container.id)  # removed


def test_container_faults(docker_engine):
    opts = {"sessions_per_server": 1, "warm": 0}
    env = envhub.make(FAULTY, runtime="docker", runtime_options=opts)
    env.reset(seed=0)
    with pytest.raises(EnvironmentFailure, match="asked to raise"):
        env.step("raise")
    env.reset(seed=0)
    with pytest.raises(StepTimeoutError):
        env.step("sleep:10")
    env.reset(seed=0)
    # Past the container's memory limit (128 MiB) the kernel kills the server: the runtime died.
    with pytest.raises(RuntimeDiedError) as exc:
        env.step("alloc:400")
    assert "out of memory" in str(exc.value) or "killed" in str(exc.value), str(exc.value)
    env.reset(seed=0)  # a new container
    with pytest.raises(RuntimeDiedError, match="exited with code 3"):
        env.step("exit")
    env.reset(seed=0)
    assert env.step("fine")[0][-1]["content"] == "echo: fine"
    env.close()


def test_warm_pool_makes_the_next_env_fast(docker_engine):
    pool = pool_for("docker", envhub.locate(ARITHMETIC), {"warm": 2, "sessions_per_server": 1})
    assert pool.prewarm() == 2
    started = time.monotonic()
    a = envhub.make(ARITHMETIC, runtime="docker")
    b = envhub.make(ARITHMETIC, runtime="docker")
    assert time.monotonic() - started < 1.5
    assert len(pool.servers) == 2
    a.close()
    b.close()


def test_a_missing_base_image_is_named(docker_engine):
    from envhub.errors import ImageBuildError

    with pytest.raises(ImageBuildError, match="envhub-missing:none is not on this machine") as exc:
        build_image(ARITHMETIC, base="envhub-missing:none", client=docker_engine, force=True)
    assert "setup-docker.sh" in exc.value.log
