"""``gymnasium.make("NS/NAME-vN")`` for installed environments too, not only the bundled ones: what
``envhub publish`` or ``envhub pull`` put in the local registry is registered when envhub is imported
(or by ``envhub.register_installed()``), major version N meaning the newest ``N.x.y``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gymnasium
import pytest

import envhub
from envhub.errors import UntrustedCodeError
from envhub.registry import LocalRegistry


def _in_a_fresh_process(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_gymnasium_makes_installed_environments_by_major_version(home, env_factory):
    local = LocalRegistry()
    for version in ("1.0.0", "1.2.0", "2.0.0"):
        local.publish(env_factory(namespace="acme", name="adder", version=version))
    code = (
        "import json, envhub, gymnasium\n"
        "refs = [gymnasium.make(i, level='easy').unwrapped.identity.ref for i in ('acme/adder-v1', 'acme/adder-v2')]\n"
        "env = gymnasium.make('envhub/arithmetic-v1', level='easy')\n"  # the bundled ones still are
        "obs, info = gymnasium.make('acme/adder-v1', level='easy').reset(seed=0)\n"
        "print(json.dumps({'refs': refs, 'obs': obs}))"
    )
    result = json.loads(_in_a_fresh_process(code))
    assert result["refs"] == ["acme/adder@1.2.0", "acme/adder@2.0.0"]
    assert result["obs"] == envhub.make("acme/adder@1.2.0", level="easy").reset(seed=0)[0]


def test_register_installed_in_this_process_and_trust_still_applies(home, env_factory, tmp_path):
    from envhub.registry import StaticRegistry, export_static

    upstream = LocalRegistry(tmp_path / "upstream")  # a registry elsewhere: pulled code is not the user's own
    upstream.publish(env_factory(namespace="zed", name="adder", version="3.1.0"))
    export_static(upstream, tmp_path / "static")
    envhub.pull("zed/adder@3.1.0", source=StaticRegistry(tmp_path / "static"))
    with pytest.raises(gymnasium.error.Error):
        gymnasium.make("zed/adder-v3")  # not registered yet: this process imported envhub before the pull
    assert "zed/adder-v3" in envhub.register_installed()
    with pytest.raises(UntrustedCodeError):
        gymnasium.make("zed/adder-v3", level="easy")
