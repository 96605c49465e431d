"""The environment behind every folder ``envhub import openenv`` writes: an environment served by
OpenEnv's own server (a running one at a URL, or an OpenEnv docker image), played over OpenEnv's
protocol with the ``openenv`` package's own client (``GenericEnvClient``).

- Episodes: each envhub episode is one OpenEnv episode on the instance's session (a WebSocket to
  ``/ws``, opened at the first reset and closed with the environment): ``reset(seed=N)`` for task
  ``seed-N`` (even seeds train, odd seeds test), then one ``step`` per assistant message.
- Actions: the assistant's text becomes the action. Where the action's schema has one text field
  (``message``, ``command``...), the text is that field; otherwise the text must be the action as a
  JSON object. A message that is no such object, or an action the server refuses as invalid
  (OpenEnv's ``VALIDATION_ERROR``), is answered with the reason and costs the turn; nothing is sent.
- Observations: one that carries chat ``messages`` (an envhub environment served over OpenEnv)
  gives those messages; any other is shown as a user message: its one text field, else its fields
  as JSON (``done``, ``reward`` and ``metadata`` left out).
- Rubric: ``openenv_reward`` is the environment's own reward: the episode's return (the sum of its
  step rewards, or with ``reward="last"`` the last one), mapped from ``reward_range`` onto [0, 1].
  An episode the environment did not end within ``max_turns``, one that got no reward, or a return
  outside the declared range, is unscored with the reason, never given a made-up score.
- Failures: a server that cannot be reached, an error frame other than a refused action, or a
  closed socket ends the episode with an EnvironmentFailure naming it: no reward.
- An image: run the way envhub's docker runtime runs its own containers (no network, read-only
  root, a non-root user, every capability dropped, memory/cpu/pid limits), started at the first
  reset, by the image id pinned at import, and removed on ``close`` (or when this interpreter exits;
  containers of a process that died are swept like the docker runtime's). Its server is reached
  through the relays of :mod:`envhub.authoring.importers.relay`.
- A URL: the server's ``/schema`` is checked against the digest recorded at import before the
  first episode, so a server that changed is named instead of played.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from envhub.authoring.importers.seeded import SeedTasks
from envhub.env.core import ChatEnv, Episode, Msg, Reply, Task, system, user
from envhub.env.rubric import Criterion, Rubric, Score
from envhub.errors import EnvironmentFailure, EnvhubError, InvalidOptionError, TransportError, Unscored
from envhub.http.transport import ConnectionPool, run_blocking

#: Observation fields that are OpenEnv's own, not what the environment shows.
OBSERVATION_FIELDS = frozenset({"done", "reward", "metadata"})
#: Action fields that are OpenEnv's own.
ACTION_FIELDS = frozenset({"metadata"})
REWARD_MODES = ("sum", "last")
SOCKET_NAME = "openenv.sock"
HEALTH_TIMEOUT_S = 120.0


def schema_digest(schema: dict[str, Any]) -> str:
    """The digest of a server's ``/schema`` answer (canonical JSON): what an import pins for a URL."""
    return "sha256:" + hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def text_fields(schema: dict[str, Any], *, skip: frozenset[str]) -> list[str]:
    """The properties of a JSON Schema whose type is a string, OpenEnv's own left out."""
    props = schema.get("properties") or {}
    return [name for name, prop in props.items() if name not in skip and prop.get("type") == "string"]


def _path(url: str, path: str) -> str:
    """``path`` under the URL's own path, if it has one."""
    return urlsplit(url).path.rstrip("/") + path


def fetch_json(url: str, path: str, *, timeout: float = 30.0) -> Any:
    """GET ``url + path`` as JSON (the import's and the adapter's look at ``/schema``, ``/metadata``)."""
    pool = ConnectionPool.for_url(url)
    try:
        response = run_blocking(pool.request("GET", _path(url, path), timeout=timeout))
    finally:
        run_blocking(pool.aclose())
    if response.status_code != 200:
        raise TransportError(url.rstrip("/") + path, f"HTTP {response.status_code}: {response.text[:200]}")
    return response.json()


def wait_healthy(url: str, *, timeout_s: float, alive: Any = None) -> None:
    """Until ``GET /health`` answers healthy; ``alive()`` returns why the server is gone, or None."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    pool = ConnectionPool.for_url(url)  # one for every poll: a kept-alive connection is reused
    try:
        while time.monotonic() < deadline:
            try:
                status = run_blocking(pool.request("GET", _path(url, "/health"), timeout=5.0)).status_code
                if status == 200:
                    return
                last = f"HTTP {status}"
            except (OSError, TimeoutError) as exc:  # TransportError is an OSError
                last = f"{type(exc).__name__}"
            gone = alive() if alive is not None else None
            if gone:
                raise RuntimeError(gone)
            time.sleep(0.25)
    finally:
        run_blocking(pool.aclose())
    raise TimeoutError(f"{url}/health did not answer healthy within {timeout_s:g} s ({last})")


class OpenEnvContainer:
    """An OpenEnv image's server in an isolated container, reachable at :attr:`url` on this machine.

    The container gets envhub's isolation (:func:`envhub.runtime.docker.isolation_options`) and the
    docker runtime's owner label, so a container left by a process that died is swept. A relay in
    the container joins a Unix socket in a mounted folder to the server's ``port``; one here joins
    a loopback port to that socket.
    """

    def __init__(self, image: str, *, port: int = 8000, python: str = "python3", memory_mb: int = 2048,
                 cpus: float = 1.0, pids: int = 256, name: str = "openenv", start_timeout_s: float = HEALTH_TIMEOUT_S) -> None:  # fmt: skip
        from envhub.authoring.importers import relay
        from envhub.identity.manifest import Limits
        from envhub.runtime.docker import OWNER_LABEL, isolation_options
        from envhub.runtime.images import CONTAINER_USER, LABEL, SOCKET_DIR, docker_client

        self.image = image
        self._client = docker_client()
        self._dir = Path(tempfile.mkdtemp(prefix="envhub-openenv-"))
        self._dir.chmod(0o777)  # the container's non-root user creates the socket here
        self._relay: Any = None
        self.container: Any = None
        self._finalizer = weakref.finalize(self, _remove, self._client, None, str(self._dir), None)
        labels = {OWNER_LABEL: str(os.getpid()), f"{LABEL}.ref": f"openenv:{name}", f"{LABEL}.openenv-image": image}
        try:
            self.container = self._client.containers.run(
                image, detach=True, labels=labels, volumes={str(self._dir): {"bind": SOCKET_DIR, "mode": "rw"}},
                **isolation_options(Limits(memory_mb=memory_mb, cpus=cpus, pids=pids)),
            )  # fmt: skip
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _remove, self._client, self.container.id, str(self._dir), None)
            source = inspect.getsource(relay)
            sock = f"{SOCKET_DIR}/{SOCKET_NAME}"
            self.container.exec_run([python, "-c", source, f"unix:{sock}", f"tcp:127.0.0.1:{port}"], detach=True,
                                    user=CONTAINER_USER)  # fmt: skip
            self._relay = relay.Relay("tcp:127.0.0.1:0", f"unix:{self._dir / SOCKET_NAME}")
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _remove, self._client, self.container.id, str(self._dir), self._relay)
            self.url = f"http://127.0.0.1:{self._relay.port}"
            wait_healthy(self.url, timeout_s=start_timeout_s, alive=self.exit_reason)
        except Exception as exc:
            why = self.exit_reason() if self.container is not None else None
            self.stop()
            raise RuntimeError(f"the OpenEnv image {image} did not serve: {why or f'{type(exc).__name__}: {exc}'}") from exc

    def exit_reason(self) -> str | None:
        """Why the container is not running (with the end of its output), or None while it runs."""
        try:
            self.container.reload()
        except Exception as exc:
            return f"the container is gone ({type(exc).__name__})"
        state = self.container.attrs.get("State", {})
        if state.get("Running"):
            return None
        why = "out of memory (OOMKilled)" if state.get("OOMKilled") else f"the container exited with code {state.get('ExitCode')}"
        with contextlib.suppress(Exception):
            tail = self.container.logs(tail=8).decode(errors="replace").strip().splitlines()
            if tail:
                why += "; last output: " + " | ".join(tail)
        return why

    def stop(self) -> None:
        self._finalizer()  # also run when this object is collected, or at the latest when the interpreter exits


def _remove(client: Any, container_id: str | None, folder: str, relay: Any) -> None:
    if relay is not None:
        with contextlib.suppress(Exception):
            relay.stop()
    if container_id is not None:
        with contextlib.suppress(Exception):
            client.containers.get(container_id).remove(force=True)
    shutil.rmtree(folder, ignore_errors=True)


class OpenEnvReward(Criterion):
    """The environment's own reward: the episode's return, mapped from ``reward_range`` onto [0, 1]."""

    kind = "function"

    def __init__(self, env: OpenEnvEnv) -> None:
        super().__init__("openenv_reward", weight=1.0)
        self.env = env

    def fingerprint(self) -> str:
        env = self.env
        what = repr((env.source, env.pin, env.reward, env.reward_range, env.action_field, env.package_version))
        return hashlib.sha256((inspect.getsource(OpenEnvReward.check) + what).encode()).hexdigest()

    def check(self, episode: Episode) -> Score:
        if not episode.state.get("ended"):
            raise Unscored(f"the environment did not end the episode within {episode.max_turns} turns, so it gave no return")
        rewards = [r for r in episode.state["rewards"] if r is not None]
        if not rewards:
            raise Unscored("the environment ended the episode without a reward")
        value = rewards[-1] if self.env.reward == "last" else float(sum(rewards))
        low, high = self.env.reward_range
        if not low <= value <= high:
            raise Unscored(f"the environment's {self.env.reward} reward {value:g} is outside the declared range [{low:g}, {high:g}]"
                           " (import with --reward-range LOW,HIGH)")  # fmt: skip
        shown = ", ".join(f"{r:g}" for r in rewards)
        return Score((value - low) / (high - low), f"the environment's {self.env.reward} reward {value:g} (step rewards: {shown})")


class OpenEnvEnv(SeedTasks, ChatEnv):
    """An OpenEnv environment at ``url``, or served by the OpenEnv ``image`` (see the module docstring).

    Args:
        url: a running OpenEnv server (``http://host:port``); or
        image: an OpenEnv docker image, run by its id ``image_id`` when given (the import pins it).
        port, python: where the image's server listens inside its container, and the interpreter
            there that runs the relay.
        container_memory_mb, container_cpus, container_pids: the image's container limits.
        pin: the digest of the server's ``/schema`` recorded at import, checked before the first episode.
        action_field: the action's text field that carries the assistant's message; None: the
            message is the action as a JSON object (``action_schema`` is shown to the model).
        observation_field: the observation's field shown to the model (default: its one text field,
            else all of it as JSON).
        chat: the observation carries chat ``messages`` (an envhub environment served over OpenEnv).
        name, description: the environment's, from its ``/metadata``.
        reward: ``sum`` (the return) or ``last``; reward_range: the range mapped onto [0, 1].
        package_version: the openenv version the folder was imported with (in the rubric's hash).
        message_timeout_s: how long one reset or step may take at the server.
    """

    max_turns = 10

    def __init__(
        self,
        *,
        url: str | None = None,
        image: str | None = None,
        image_id: str | None = None,
        port: int = 8000,
        python: str = "python3",
        container_memory_mb: int = 2048,
        container_cpus: float = 1.0,
        container_pids: int = 256,
        pin: str | None = None,
        action_field: str | None = None,
        action_schema: dict[str, Any] | None = None,
        observation_field: str | None = None,
        chat: bool = False,
        name: str = "openenv",
        description: str = "",
        reward: str = "sum",
        reward_range: tuple[float, float] | list[float] = (0.0, 1.0),
        package_version: str | None = None,
        message_timeout_s: float = 60.0,
        max_turns: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(max_turns=max_turns, render_mode=render_mode)
        if (url is None) == (image is None):
            raise InvalidOptionError(self.env_name, "url", "give exactly one of url (a running OpenEnv server) and image")
        if reward not in REWARD_MODES:
            raise InvalidOptionError(self.env_name, "reward", f"{reward!r} is not one of {', '.join(REWARD_MODES)}")
        low, high = (float(v) for v in reward_range)
        if not low < high:
            raise InvalidOptionError(self.env_name, "reward_range", f"needs LOW < HIGH, got {low:g}, {high:g}")
        self.url = url.rstrip("/") if url else None
        self.image, self.image_id, self.port, self.python = image, image_id, port, python
        self.container_limits = {"memory_mb": container_memory_mb, "cpus": container_cpus, "pids": container_pids}
        self.pin, self.action_field, self.action_schema = pin, action_field, action_schema or {}
        self.observation_field, self.chat = observation_field, chat
        self.source_name, self.description = name, description
        self.reward, self.reward_range = reward, (low, high)
        self.package_version, self.message_timeout_s = package_version, float(message_timeout_s)
        self.source = url or image
        self._container: OpenEnvContainer | None = None
        self._client: Any = None
        self._lock = threading.Lock()
        self.rubric = Rubric([OpenEnvReward(self)])

    def initial_messages(self, task: Task) -> list[Msg]:
        return [] if self.chat else [system(self._header())]  # setup_episode adds the first observation

    def _header(self) -> str:
        said = self.description.strip()
        about = f" ({said})" if said and said != f"{self.source_name} environment" else ""  # not OpenEnv's default line
        if self.action_field is not None:
            how = f"Each of your messages is sent to it as the action's `{self.action_field}`."
        else:
            schema = json.dumps(self.action_schema, sort_keys=True)
            how = f"Each of your messages must be the action: one JSON object matching this JSON Schema: {schema}"
        return f"You are acting in the OpenEnv environment {self.source_name}{about}. {how}"

    # --- the episode ----------------------------------------------------------------------------

    def setup_episode(self, episode: Episode) -> None:
        episode.state["rewards"] = []
        result = self._call("reset", lambda client: client.reset(seed=episode.task["seed"]))
        episode.state["reset_metadata"] = result.metadata or {}
        episode.messages.extend(self._shown(result.observation, episode, reset=True))
        if result.done:
            raise EnvironmentFailure(self.env_name, "reset", f"the OpenEnv environment {self.source_name} ended at reset")

    def respond(self, episode: Episode, action: str) -> Reply:
        payload, why = self._action(action)
        if payload is None:
            return Reply(messages=[user(f"That is not a valid action: {why}. {self._header()}")], info={"openenv": {"refused": why}})
        try:
            result = self._call("respond", lambda client: client.step(payload))
        except _Refused as refused:
            return Reply(messages=[user(f"The environment refused that action: {refused}")], info={"openenv": {"refused": str(refused)}})
        episode.state["rewards"].append(None if result.reward is None else float(result.reward))
        messages = self._shown(result.observation, episode, reset=False)
        metadata = result.metadata or {}
        info = {"openenv": {"reward": result.reward, "metadata": metadata}}
        if result.done:
            episode.state["ended"] = True  # the environment's episode is over, and its reward final
        # An envhub environment says when its episode was cut off rather than ended: then envhub's own
        # turn limit (the same, set at import) truncates it here too.
        cut_off = bool(metadata.get("truncated")) and not metadata.get("terminated")
        return Reply(messages=messages, done=bool(result.done) and not cut_off, info=info)

    def close(self) -> None:
        super().close()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        container, self._container = self._container, None
        if container is not None:
            container.stop()

    # --- talking to the server ------------------------------------------------------------------

    def _action(self, text: str) -> tuple[dict[str, Any] | None, str]:
        if self.action_field is not None:
            return {self.action_field: text}, ""
        try:
            payload = json.loads(text.strip().removeprefix("```json").removeprefix("```").removesuffix("```"))
        except ValueError as exc:
            return None, f"it is not JSON ({exc})"
        if not isinstance(payload, dict):
            return None, f"it is JSON {type(payload).__name__}, not an object"
        return payload, ""

    def _shown(self, observation: Any, episode: Episode, *, reset: bool) -> list[Msg]:
        observation = observation if isinstance(observation, dict) else {}
        if self.chat:
            messages = [dict(m) for m in observation.get("messages") or []]
            if observation.get("full") and not reset:
                episode.messages[:] = messages  # the environment rewrote the conversation: take it whole
                return []
            return messages
        shown = {k: v for k, v in observation.items() if k not in OBSERVATION_FIELDS}
        field = self.observation_field
        if field is None:
            texts = [k for k, v in shown.items() if isinstance(v, str)]
            field = texts[0] if len(texts) == 1 and len(shown) == 1 else None
        if field is not None:
            value = shown.get(field, "")
            return [user(value if isinstance(value, str) else json.dumps(value, sort_keys=True))]
        return [user(json.dumps(shown, sort_keys=True, ensure_ascii=False))]

    def _call(self, where: str, call: Any) -> Any:
        client = self._connected(where)
        try:
            return call(client)
        except RuntimeError as exc:
            text = str(exc)
            if "VALIDATION_ERROR" in text or "INVALID_ACTION" in text:
                raise _Refused(text.removeprefix("Server error: ")) from None
            self._drop_client()
            raise EnvironmentFailure(self.env_name, where, f"the OpenEnv server answered with an error: {text}") from exc
        except (ConnectionError, OSError, TimeoutError) as exc:
            self._drop_client()
            gone = self._container.exit_reason() if self._container is not None else None
            raise EnvironmentFailure(self.env_name, where, f"the OpenEnv server at {self._where()} is unreachable: "
                                     f"{type(exc).__name__}: {exc}" + (f"; {gone}" if gone else "")) from exc  # fmt: skip
        except Exception as exc:  # websockets' ConnectionClosed and the like
            self._drop_client()
            raise EnvironmentFailure(self.env_name, where, f"the OpenEnv session broke: {type(exc).__name__}: {exc}") from exc

    def _connected(self, where: str) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            url = self._server_url(where)
            from openenv.core import GenericEnvClient

            client = GenericEnvClient(base_url=url, message_timeout_s=self.message_timeout_s).sync()
            try:
                client.connect()
            except Exception as exc:
                raise EnvironmentFailure(self.env_name, where, f"cannot open an OpenEnv session at {self._where()}: {exc}"
                                         + ("" if self._container else "; the docker runtime's container has no network, "
                                            "so a URL source plays in the inprocess and process runtimes only")) from exc  # fmt: skip
            self._client = client
            return client

    def _server_url(self, where: str) -> str:
        if self.url is not None:
            if self.pin is not None:
                try:
                    found = schema_digest(fetch_json(self.url, "/schema"))
                except Exception as exc:
                    raise EnvironmentFailure(self.env_name, where, f"cannot read {self.url}/schema: {type(exc).__name__}: {exc}") from exc
                if found != self.pin:
                    raise EnvironmentFailure(self.env_name, where, f"the server at {self.url} serves another schema than the one "
                                             f"imported ({found}, imported {self.pin}): import it again")  # fmt: skip
            return self.url
        if self._container is None:
            try:
                self._container = OpenEnvContainer(self.image_id or self.image, port=self.port, python=self.python,
                                                   name=self.source_name, **self.container_limits)  # fmt: skip
            except EnvhubError:
                raise
            except Exception as exc:
                raise EnvironmentFailure(self.env_name, where, str(exc)) from exc
        return self._container.url

    def _where(self) -> str:
        return self.url or f"the container of {self.image}"

    def _drop_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


class _Refused(Exception):
    """The server refused an action as invalid: the model is told, the episode goes on."""
