"""`envhub import openenv`, against real OpenEnv servers: environments written with openenv 0.10's
own server classes (tests/fixtures/openenv_reverse) under uvicorn on 127.0.0.1 and in an OpenEnv
image run isolated, and an envhub environment served over OpenEnv's protocol by `envhub serve`.
The folder validates, passes the audit, plays alike in every runtime that can reach the server, is
scored by the environment's own reward, and a server that fails, hangs or is missing gives an
error or an unscored episode, never a made-up reward."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import envhub
from envhub.authoring import validate
from envhub.authoring.importers import import_environment
from envhub.authoring.importers.openenv_runtime import OpenEnvEnv
from envhub.errors import EnvironmentFailure, ImportSourceError

from imported_checks import (
    assert_its_own_tests_pass,
    assert_the_process_runtime_plays_it_alike,
    assert_the_readme_says,
    assert_validates_and_passes_the_audit,
)
from loopback import free_port

pytest.importorskip("openenv.core", reason="the `interop` extra (pip install 'envhub[interop]') is not installed")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, reverse_url) -> Path:
    out = tmp_path_factory.mktemp("import") / "reverse"
    import_environment("openenv", reverse_url, output=out, options={"max_turns": "4"})
    return out


def word_of(obs) -> str:
    return obs[-1]["content"].rsplit(" ", 1)[-1]


def play(env, actions, *, seed=0):
    obs, _ = env.reset(seed=seed)
    steps = []
    for action in actions(obs):
        step = env.step(action)
        steps.append(step)
        if step[2] or step[3]:
            break
    return obs, steps


def test_the_folder_pins_the_client_and_the_servers_schema(folder, reverse_url):
    manifest = envhub.load_manifest(folder)
    assert manifest.ref == "local/openenv-reverseenvironment@0.1.0" and manifest.dependencies == ["openenv==0.10.0"]
    assert manifest.max_turns == 4 and "openenv" in manifest.tags
    module = (folder / "openenv_reverseenvironment_env.py").read_text()
    assert f"'url': '{reverse_url}'" in module and "'pin': 'sha256:" in module and "'action_field': 'message'" in module
    assert_the_readme_says(folder, "GenericEnvClient", "Reverse the word:", f"envhub import openenv {reverse_url}", "openenv_reward")


def test_validate_audit_and_the_folders_own_tests(folder):
    assert_validates_and_passes_the_audit(folder, tasks=4)
    assert_its_own_tests_pass(folder)


def test_scored_by_the_environments_own_reward(folder):
    env = envhub.make(folder)
    obs, steps = play(env, lambda obs: ["wrong", word_of(obs)[::-1]], seed=2)
    assert obs[0]["role"] == "system" and "`message`" in obs[0]["content"] and obs[1]["content"].startswith("Reverse the word: ")
    assert steps[0][0][-1] == {"role": "user", "content": f"Wrong, try again: reverse {word_of(obs)}"}
    _, reward, terminated, truncated, info = steps[-1]
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["rubric"]["criteria"]["openenv_reward"]["score"] == 1.0 and info["openenv"]["reward"] == 1.0
    _, steps = play(env, lambda obs: ["a", "b", "c"], seed=2)
    assert steps[-1][1:4] == (0.0, True, False) and len(steps) == 3  # the environment's three tries, then its 0.0
    env.close()


def test_an_episode_cut_off_is_unscored_not_guessed(folder):
    env = envhub.make(folder, max_turns=1)
    _, steps = play(env, lambda obs: ["wrong"])
    _, reward, terminated, truncated, info = steps[-1]
    assert truncated and not terminated and reward == 0.0
    assert info["rubric"]["unscored"] == ["openenv_reward"]
    assert "did not end the episode within 1 turns" in info["rubric"]["criteria"]["openenv_reward"]["reason"]
    env.close()


def _episodes(env, seeds=(0, 1, 2), *, same_source=True):
    """Episodes as plain data; across two sources (a URL and an image) the rubric's hash differs by design."""
    out = []
    for seed in seeds:
        obs, steps = play(env, lambda obs: ["nope", word_of(obs)[::-1]], seed=seed)
        if not same_source:
            steps[-1][4]["rubric"].pop("hash")
        out.append(json.loads(json.dumps([obs, steps])))
    return out


def test_one_episode_per_runtime_equals_inprocess(folder):
    assert_the_process_runtime_plays_it_alike(folder, _episodes)


def test_json_actions_when_the_action_has_several_fields(tmp_path, sum_url):
    out = tmp_path / "sum"
    import_environment("openenv", sum_url, output=out, options={"reward_range": "0,10", "max_turns": "3"})
    env = envhub.make(out)
    obs, _ = env.reset(seed=4)
    assert '"required": ["a", "b"]' in obs[0]["content"]  # the action's JSON Schema, for the model
    target = json.loads(obs[-1]["content"])["target"]
    obs, reward, terminated, *_ = env.step("five and six")
    assert not terminated and obs[-1]["content"].startswith("That is not a valid action: it is not JSON")
    obs, reward, terminated, *_ = env.step('{"a": "x", "b": 1}')
    assert not terminated and obs[-1]["content"].startswith("The environment refused that action")  # OpenEnv's VALIDATION_ERROR
    obs, reward, terminated, truncated, info = env.step(json.dumps({"a": target - 3, "b": 3}))
    assert terminated and reward == 1.0 and "sum reward 10" in info["rubric"]["criteria"]["openenv_reward"]["reason"]
    assert validate(out).ok
    # imported with the default range [0, 1], the environment's 10.0 is not squeezed into it: unscored
    narrow = tmp_path / "narrow"
    import_environment("openenv", sum_url, output=narrow)
    env = envhub.make(narrow)
    obs, _ = env.reset(seed=4)
    target = json.loads(obs[-1]["content"])["target"]
    *_, info = env.step(json.dumps({"a": target, "b": 0}))
    assert info["rubric"]["unscored"] == ["openenv_reward"] and "outside the declared range [0, 1]" in info["rubric"]["criteria"]["openenv_reward"]["reason"]


@pytest.fixture(scope="module")
def served_guess_number(tmp_path_factory):
    """guess-number behind `envhub serve`, which speaks OpenEnv's protocol beside its own."""
    from openenv_servers import serve_command

    home = tmp_path_factory.mktemp("home")
    with serve_command([sys.executable, "-m", "envhub", "serve", "guess-number", "--log-level", "warning"], home=home) as url:
        yield url


def test_the_envhub_protocol_round_trip(tmp_path, served_guess_number):
    """guess-number served over OpenEnv's protocol and imported back plays as itself."""
    out = tmp_path / "gn"
    import_environment("openenv", served_guess_number, output=out)  # max_turns: the source's own
    assert "'chat': True" in (out / "openenv_envhub_guess_number_env.py").read_text()
    imported, native = envhub.make(out), envhub.make("guess-number")
    assert imported.max_turns == native.max_turns
    for seed in (1, 2):
        obs, _ = native.reset(seed=seed)
        assert imported.reset(seed=seed)[0] == obs
        for guess in ("50", "25", "75", "I give up", "10", "60", "40", "90", "5", "95", "1"):
            step, step_i = native.step(guess), imported.step(guess)
            assert step_i[0] == step[0] and step_i[1:4] == step[1:4]
            if step[2] or step[3]:
                break
        assert step[2] or step[3]
        assert step_i[4]["openenv"]["metadata"]["rubric"]["total"] == step[4]["rubric"]["total"] == step_i[1]
    imported.close()


def test_sources_that_are_missing_or_not_openenv_are_refused(tmp_path, reverse_url):
    def refused(source, **options):
        with pytest.raises(ImportSourceError) as caught:
            import_environment("openenv", source, output=tmp_path / "x", options=options)
        assert not (tmp_path / "x").exists()
        return caught.value

    dead = f"http://127.0.0.1:{free_port()}"
    assert "no OpenEnv server answers" in str(refused(dead))
    assert "the action has no text field `text`" in str(refused(reverse_url, action_field="text"))
    assert "the observation has no field `board`" in str(refused(reverse_url, observation_field="board"))
    assert "LOW must be below HIGH" in str(refused(reverse_url, reward_range="1,0"))
    assert "give an OpenEnv server's URL or a docker image" in str(refused(" "))
    # a web server that is not OpenEnv's: no /health
    import http.server
    import threading

    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        assert "HTTP 404" in str(refused(f"http://127.0.0.1:{plain.server_address[1]}"))
    finally:
        plain.shutdown()


def test_a_server_that_fails_or_hangs_ends_the_episode_with_no_reward(folder, reverse_url):
    env = envhub.make(folder)
    env.reset(seed=0)
    with pytest.raises(EnvironmentFailure, match="the OpenEnv server answered with an error"):
        env.step("raise")
    env.reset(seed=0)  # a new session: the environment goes on
    assert env.step("wrong")[2] is False
    env.close()
    slow = envhub.make(folder, message_timeout_s=1.0)
    slow.reset(seed=0)
    with pytest.raises(EnvironmentFailure, match="TimeoutError|timed out|unreachable|broke"):
        slow.step("sleep:4")
    slow.close()
    changed = OpenEnvEnv(url=reverse_url, pin="sha256:" + "0" * 64)
    with pytest.raises(EnvironmentFailure, match="serves another schema than the one imported"):
        changed.reset(seed=0)

    gone = OpenEnvEnv(url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(EnvironmentFailure, match="cannot open an OpenEnv session"):
        gone.reset(seed=0)


# --- an OpenEnv docker image, run isolated ----------------------------------------------------------


@pytest.fixture(scope="module")
def reverse_image(docker_engine):
    from openenv_servers import build_openenv_image

    return build_openenv_image(docker_engine)


@pytest.mark.docker
def test_an_openenv_image_runs_isolated_and_plays_alike(tmp_path, reverse_image, docker_engine, folder):
    out = tmp_path / "image"
    result = import_environment("openenv", reverse_image, output=out, options={"max_turns": "4"})
    module = (out / "openenv_reverseenvironment_env.py").read_text()
    image_id = docker_engine.images.get(reverse_image).id
    assert f"'image_id': '{image_id}'" in module and result.manifest.dependencies == ["openenv==0.10.0"]
    assert not _containers(docker_engine, reverse_image)  # the import's own container is gone
    local = envhub.make(out)
    local.reset(seed=0)
    (container,) = _containers(docker_engine, image_id)
    host = container.attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
    assert container.attrs["Config"]["User"] == "10001:10001" and host["Memory"] == 2048 * 2**20
    by_url = envhub.make(folder)  # the same environment served by uvicorn on this machine
    assert _episodes(local, same_source=False) == _episodes(by_url, same_source=False)
    remote = envhub.make(out, runtime="process")
    assert _episodes(remote) == _episodes(local)
    remote.close()
    local.close()
    assert not _containers(docker_engine, image_id)  # removed on close
    assert validate(out).ok


@pytest.mark.docker
def test_images_that_are_missing_or_do_not_serve_are_refused(tmp_path, reverse_image, docker_engine):
    with pytest.raises(ImportSourceError, match="no docker image `envhub-test/absent:1` on this machine"):
        import_environment("openenv", "envhub-test/absent:1", output=tmp_path / "a")
    with pytest.raises(ImportSourceError, match="did not serve") as caught:
        import_environment("openenv", reverse_image, output=tmp_path / "b", options={"port": "9", "start_timeout_s": "15"})
    assert "--port" in caught.value.hint
    image_id = docker_engine.images.get(reverse_image).id
    assert not _containers(docker_engine, image_id)


def _containers(client, image):
    image_id = client.images.get(image).id
    return [c for c in client.containers.list(all=True, filters={"label": "org.envhub.openenv-image"}) if c.image.id == image_id]


def test_the_command_line(tmp_path, reverse_url):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "envhub", "import", "openenv", reverse_url, "--name", "acme/reverse",
                           "--reward", "last", "--max-turns", "3", "-o", str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "acme/reverse@0.1.0 from openenv==0.10.0" in done.stderr and "'reward': 'last'" in (out / "reverse_env.py").read_text()

    dead = subprocess.run([sys.executable, "-m", "envhub", "import", "openenv", f"http://127.0.0.1:{free_port()}", "-o",
                           str(tmp_path / "dead")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert dead.returncode == 1 and "no OpenEnv server answers" in dead.stderr and "Traceback" not in dead.stderr
    helped = subprocess.run([sys.executable, "-m", "envhub", "import", "--help"], capture_output=True, text=True, timeout=300)
    assert "an OpenEnv server's URL" in helped.stdout and "--reward-range" in helped.stdout
