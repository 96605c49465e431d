"""``envhub import openenv``: an environment served by OpenEnv's own server, over OpenEnv's protocol.

    envhub import openenv http://127.0.0.1:8000 -o echo              # a running server
    envhub import openenv my-openenv-env:latest --reward-range 0,10 -o mine   # an OpenEnv docker image

The environment is :class:`~envhub.authoring.importers.openenv_runtime.OpenEnvEnv`, which plays it
with the ``openenv`` package's own client. Before it writes anything, the import reads the server's
``/metadata`` and ``/schema`` (an image is run for that, isolated as the docker runtime runs its
containers) and resets one episode: a server that does not answer, an image that is not on this
machine or does not serve, or an action the adapter cannot fill is refused with the reason. The
manifest pins the client (``openenv==0.10.0``); the module pins the source: the image's id, or the
digest of the server's schema.
"""

from __future__ import annotations

import json
from typing import Any

from envhub.authoring.importers.common import Generated, Option, Source, installed_source, slug
from envhub.authoring.importers.openenv_runtime import (
    ACTION_FIELDS,
    OBSERVATION_FIELDS,
    REWARD_MODES,
    OpenEnvContainer,
    OpenEnvEnv,
    fetch_json,
    schema_digest,
    text_fields,
    wait_healthy,
)
from envhub.errors import EnvhubError, ImportSourceError

PACKAGE = "openenv"
MODULE = "openenv.core"
SUPPORTED = "==0.10.0"
SUMMARY = "an environment served by OpenEnv's server (a running URL, or an OpenEnv docker image run isolated), over OpenEnv's protocol"
SOURCE_HELP = "an OpenEnv server's URL (http://HOST:PORT), or an OpenEnv docker image on this machine (NAME:TAG or sha256:ID)"


def _reward_range(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(",")
    if not sep:
        raise ValueError("write LOW,HIGH, e.g. 0,1")
    low_f, high_f = float(low), float(high)
    if not low_f < high_f:
        raise ValueError("LOW must be below HIGH")
    return low_f, high_f


OPTIONS = (
    Option("action-field", "the action's text field that carries the model's message (default: the action's one "
           "text field; with none or several, the message is the action as a JSON object)"),  # fmt: skip
    Option("json-actions", "the model's message is the action as a JSON object, even when the action has one text field", flag=True),
    Option("observation-field", "the observation's field shown to the model (default: its one text field, else all of it as JSON)"),
    Option("reward", "the episode's score: `sum` of its step rewards (the return) or the `last` one", default="sum", choices=REWARD_MODES),
    Option("reward-range", "LOW,HIGH of that reward, mapped onto [0, 1]; a reward outside it is unscored", parse=_reward_range,
           default=(0.0, 1.0)),  # fmt: skip
    Option("max-turns", "the model's turns before an episode is cut off (unscored; default: an envhub source's own, else 10)", parse=int),
    Option("port", "an image's server port inside its container (OpenEnv's default: 8000)", parse=int, default=8000),
    Option("python", "an image's Python interpreter, which runs the relay to its server", default="python3"),
    Option("memory-mb", "an image's container memory limit", parse=int, default=2048),
    Option("start-timeout-s", "how long the import waits for an image's server to answer /health", parse=float, default=120.0),
    Option("step-timeout-s", "how long one reset or step may take at the server", parse=float, default=60.0),
)


def resolve_source(text: str) -> Source:
    """The source is a URL or an image; the installed package pinned is OpenEnv's client."""
    client = installed_source("openenv", PACKAGE, package=PACKAGE, module=MODULE, supported=SUPPORTED)
    if not text.strip():
        raise ImportSourceError("openenv", text, "give an OpenEnv server's URL or a docker image", hint=SOURCE_HELP)
    return Source(kind="openenv", text=text.strip(), package=client.package, version=client.version, module=client.module)


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def build(source: Source, options: dict[str, Any]) -> Generated:
    text = source.text
    settings: dict[str, Any] = {}
    container: OpenEnvContainer | None = None
    try:
        if is_url(text):
            url = text.rstrip("/")
            try:
                wait_healthy(url, timeout_s=10)
            except Exception as exc:
                raise ImportSourceError("openenv", text, f"no OpenEnv server answers at {url}/health ({exc})",
                                        hint="start the server, or check the URL (http://HOST:PORT)") from None  # fmt: skip
            settings["url"] = url
        else:
            image_id = _local_image(text)
            try:
                container = OpenEnvContainer(image_id, port=options["port"], python=options["python"], memory_mb=options["memory_mb"],
                                             start_timeout_s=options["start_timeout_s"])  # fmt: skip
            except EnvhubError:
                raise
            except RuntimeError as exc:
                raise ImportSourceError("openenv", text, str(exc), hint="check --port (where its server listens) and "
                                        "--python (an interpreter in the image); the container has no network") from None  # fmt: skip
            url = container.url
            settings.update(image=text, image_id=image_id, port=options["port"], python=options["python"],
                            container_memory_mb=options["memory_mb"])  # fmt: skip
        schema, metadata = _read(text, url, "/schema"), _read(text, url, "/metadata")
        if not isinstance(schema, dict) or not isinstance(schema.get("action"), dict):
            raise ImportSourceError("openenv", text, f"{url}/schema holds no action schema: {json.dumps(schema)[:300]}")
        settings.update(_action_settings(text, schema, options))
        name = str(metadata.get("name") or "openenv") if isinstance(metadata, dict) else "openenv"
        description = str(metadata.get("description") or "") if isinstance(metadata, dict) else ""
        settings.update(
            pin=None if container else schema_digest(schema), name=name, description=description[:500],
            observation_field=options["observation_field"], reward=options["reward"],
            reward_range=list(options["reward_range"]), message_timeout_s=options["step_timeout_s"],
            package_version=source.version,
        )  # fmt: skip
        first, reset_info = _first_observation(settings, url)
    finally:
        if container is not None:
            container.stop()
    settings = {k: v for k, v in settings.items() if v is not None}
    source_turns = reset_info.get("max_turns") if settings.get("chat") else None
    options["max_turns"] = options["max_turns"] or (source_turns if isinstance(source_turns, int) else DEFAULT_MAX_TURNS)
    return Generated(
        name=f"openenv-{slug(name)}",
        description=f"The OpenEnv environment {name} ({'image ' + text if container else 'served at ' + text}), played over "
        f"OpenEnv's protocol with openenv {source.version}'s client, scored by its own reward.",
        class_name="OpenEnvEnv",
        runtime_module="envhub.authoring.importers.openenv_runtime",
        settings=settings,
        max_turns=options["max_turns"],
        rubric_summary=f"openenv_reward: the environment's own {options['reward']} reward, [{_range(options)}] mapped onto [0, 1]",
        tags=["openenv", "imported", "multi-turn"],
        step_timeout_s=max(options["step_timeout_s"] * 2, 30.0) + (HEALTH_BUDGET_S if container else 0.0),
        memory_mb=1024,  # the adapter imports openenv's client (gradio, fastmcp among its imports)
        readme=_readme(text, settings, options, bool(container), first),
        tests=_TESTS,
    )


DEFAULT_MAX_TURNS = 10
#: A container's server may take this long to start at the first reset (inside the step timeout).
HEALTH_BUDGET_S = 120.0


def _range(options: dict[str, Any]) -> str:
    low, high = options["reward_range"]
    return f"{low:g}, {high:g}"


def _local_image(text: str) -> str:
    """The id of the image ``text`` names on this machine (no registry is reached: it is not pulled)."""
    import docker.errors

    from envhub.runtime.images import docker_client

    try:
        client = docker_client()
    except EnvhubError as exc:
        raise ImportSourceError("openenv", text, f"`{text}` is not a URL, so it is taken as a docker image, and {exc}",
                                hint=exc.hint) from None  # fmt: skip
    try:
        return client.images.get(text).id
    except docker.errors.ImageNotFound:
        raise ImportSourceError("openenv", text, f"no docker image `{text}` on this machine (images are not pulled: "
                                "envhub's containers run with no network)",
                                hint=f"`docker pull {text}` or `docker load` it first, or give a running server's URL") from None  # fmt: skip
    except docker.errors.APIError as exc:
        raise ImportSourceError("openenv", text, f"the Docker engine refused `{text}`: {exc}") from None


def _read(text: str, url: str, path: str) -> Any:
    try:
        return fetch_json(url, path)
    except Exception as exc:
        raise ImportSourceError("openenv", text, f"GET {path} failed: {type(exc).__name__}: {exc}",
                                hint="is it an OpenEnv server (openenv 0.10's create_app)?") from None  # fmt: skip


def _action_settings(text: str, schema: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    action, observation = schema["action"], schema.get("observation") or {}
    fields = text_fields(action, skip=ACTION_FIELDS)
    given = options["action_field"]
    if given is not None:
        if given not in fields:
            raise ImportSourceError("openenv", text, f"--action-field {given}: the action has no text field `{given}`",
                                    hint="its text fields: " + (", ".join(fields) or "none (leave --action-field out)"))  # fmt: skip
        field = given
    else:
        field = fields[0] if len(fields) == 1 and not options["json_actions"] else None
    required = [r for r in action.get("required") or [] if r != field and r not in ACTION_FIELDS]
    if field is not None and required:
        field = None  # other required fields: the message must be the whole action
    chat = field == "message" and "messages" in (observation.get("properties") or {})
    given_obs = options["observation_field"]
    if given_obs is not None and given_obs not in (observation.get("properties") or {}):
        shown = sorted(set(observation.get("properties") or {}) - OBSERVATION_FIELDS)
        raise ImportSourceError("openenv", text, f"--observation-field {given_obs}: the observation has no field `{given_obs}`",
                                hint="its fields: " + ", ".join(shown))  # fmt: skip
    return {"action_field": field, "action_schema": None if field else action, "chat": chat or None}


def _first_observation(settings: dict[str, Any], url: str) -> tuple[str, dict[str, Any]]:
    """Reset one episode (seed 0) the way the environment will: what the model is shown first, and
    the reset's metadata (an envhub source's info, with its ``max_turns``)."""
    env = OpenEnvEnv(**{**{k: v for k, v in settings.items() if k not in ("image", "image_id", "port", "python",
                                                                          "container_memory_mb")}, "url": url, "pin": None})  # fmt: skip
    try:
        obs, _ = env.reset(seed=0)
        reset_info = dict(env.episode.state.get("reset_metadata") or {}) if env.episode else {}
    except EnvhubError as exc:
        raise ImportSourceError("openenv", settings.get("image") or url, f"a reset fails: {exc}") from None
    finally:
        env.close()
    return (obs[-1]["content"] if obs else ""), reset_info


def _readme(text: str, settings: dict[str, Any], options: dict[str, Any], image: bool, first: str) -> str:
    if settings.get("chat"):
        actions = "Its actions are `{\"message\": TEXT}` and its observations chat messages (an envhub environment served over OpenEnv): the conversation is the environment's own."
    elif settings.get("action_field"):
        actions = f"The model's message is sent as the action's `{settings['action_field']}` field."
    else:
        actions = ("The model's message must be the whole action, one JSON object (the system message gives its JSON Schema); "
                   "a message that is not one is answered with the reason and costs the turn.")  # fmt: skip
    where = (f"The image `{text}` (pinned by its id `{settings.get('image_id', '')[:19]}...`) is run at the first reset the way "
             "envhub's docker runtime runs its containers: no network, a read-only root, a non-root user, no capabilities, "
             f"memory ({settings.get('container_memory_mb')} MB), CPU and process limits; it is removed when the environment "
             "closes. Its server is reached through a relay (a Unix socket in a mounted folder). The environment therefore "
             "plays in the inprocess and process runtimes; the docker runtime's container cannot start another container."
             if image else
             f"The server at {text} must be running where the environment plays; its `/schema` is checked against the digest "
             "recorded at import before the first episode. The docker runtime's container has no network, so it plays "
             "in the inprocess and process runtimes.")  # fmt: skip
    low, high = options["reward_range"]
    return "\n".join([
        f"OpenEnv's `{settings['name']}`, played with the `openenv` package's own client (`GenericEnvClient`) over OpenEnv's WebSocket protocol.",
        "",
        "## Episodes",
        "",
        where,
        "",
        f"Tasks are seeds (`seed-N`, OpenEnv's `reset(seed=N)`): even seeds are `train`, odd seeds `test`. {actions}",
        "An action the server refuses as invalid (`VALIDATION_ERROR`) is answered with its reason and costs the turn.",
        f"An episode ends when the environment says it is done, or is cut off after {options['max_turns']} of the model's turns.",
        "",
        "## Scoring",
        "",
        f"- `openenv_reward` (1.0): the environment's own reward, the {options['reward']} of its step rewards, "
        f"mapped from [{low:g}, {high:g}] onto [0, 1].",
        "- An episode cut off at the turn limit, one that ends with no reward, or a reward outside that range is "
        "reported unscored with the reason, never given a made-up score.",
        "- A server error, a broken session or an unreachable server ends the episode with an EnvironmentFailure: no reward.",
        "",
        "The import reset one episode (seed 0); the model is first shown:",
        "",
        "```text",
        first[:600],
        "```",
    ])  # fmt: skip


_TESTS = '''

def test_an_episode_is_played_over_openenvs_protocol():
    env = envhub.make(FOLDER)
    obs, _ = env.reset(seed=0)
    assert obs and obs[-1]["content"]
    for _ in range(env.max_turns):
        obs, reward, terminated, truncated, info = env.step("hello")
        if terminated or truncated:
            break
    assert "openenv_reward" in info["rubric"]["criteria"]
    env.close()
'''
