"""The echo environment of ``benchmarks/runtimes.py`` written for openenv-core, server and client.

The same logic as ``tests/fixtures/echo``: the user repeats the assistant's message. The observation
is the echoed message (OpenEnv's style, like its own echo example): like envhub's step delta, each
step carries one message, not the whole conversation.

    python benchmarks/runtimes_openenv.py PORT MAX_SESSIONS     # serve it (uvicorn + FastAPI, WebSocket)
"""

from __future__ import annotations

import sys
from typing import Any

from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State


class EchoAction(Action):
    message: str


class EchoObservation(Observation):
    message: str = ""


class EchoEnvironment(Environment):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self._state = State(step_count=0)

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> EchoObservation:
        self._state = State(episode_id=episode_id, step_count=0)
        return EchoObservation(message="Say something.")

    def step(self, action: EchoAction, timeout_s: float | None = None, **kwargs: Any) -> EchoObservation:
        self._state.step_count += 1
        done = action.message == "stop"
        return EchoObservation(message="" if done else action.message, done=done, reward=1.0 if done else 0.0)

    @property
    def state(self) -> State:
        return self._state


class EchoClient(EnvClient[EchoAction, EchoObservation, State]):
    def _step_payload(self, action: EchoAction) -> dict[str, Any]:
        return {"message": action.message}

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[EchoObservation]:
        obs = payload.get("observation", {})
        return StepResult(
            observation=EchoObservation(message=obs.get("message", ""), done=payload.get("done", False)),
            reward=payload.get("reward"),
            done=payload.get("done", False),
        )

    def _parse_state(self, payload: dict[str, Any]) -> State:
        return State(**payload)


def main() -> None:
    import uvicorn
    from openenv.core.env_server.http_server import create_fastapi_app

    port, max_sessions = int(sys.argv[1]), int(sys.argv[2])
    app = create_fastapi_app(EchoEnvironment, EchoAction, EchoObservation, max_concurrent_envs=max_sessions)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=4096)


if __name__ == "__main__":
    main()
