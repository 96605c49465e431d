"""Checks made before an evaluation's first episode, so that a run that cannot do what was asked
fails at once with one line and the next step, rather than recording N identical errors.

- :func:`check_environment`: the environment resolves, its factory takes the kwargs, and one
  instance resets on the run's split and first seed (then it is closed);
- :func:`check_endpoint`: the endpoint answers ``GET /models`` and knows the model; when the list
  does not name it (servers may accept aliases they do not list), one request of one token settles it.

Each raises :class:`~envhub.errors.EvalRunError` naming what is wrong, chained to the cause.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from envhub.errors import EndpointError, EntrypointError, EnvhubError, EvalRunError
from envhub.http.chat import RETRYABLE_STATUS, RetryPolicy, chat_sync
from envhub.http.transport import ConnectionPool, Response, run_blocking

__all__ = ["check_endpoint", "check_environment"]

#: Longest wait for the endpoint's first answer: a server that is up answers /models at once.
PROBE_TIMEOUT_S = 15.0


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def check_environment(
    env: str,
    *,
    runtime: str,
    env_kwargs: dict[str, Any],
    split: str,
    seed: int,
    run_dir: str,
) -> dict[str, Any]:
    """Make one ``env`` and reset it once; return its identity (``to_dict()`` plus ``ref``)."""
    from envhub.runtime.make import make

    where = "make"
    instance = None
    try:
        instance = make(env, runtime=runtime, **env_kwargs)
        where = "reset"
        instance.reset(seed=seed, options={"split": split})
        identity = instance.identity.to_dict()
        identity["ref"] = instance.identity.ref
        return identity
    except EnvhubError as exc:  # not found, bad kwargs, bad option value: the message says which
        hint = exc.hint
        if isinstance(exc, EntrypointError) and env_kwargs:  # most often a misspelt --env-arg
            hint = (f"check the --env-arg names ({', '.join(env_kwargs)}): the environment's factory takes "
                    "them as keyword arguments")  # fmt: skip
        raise EvalRunError(run_dir, _first_line(str(exc), 500), hint=hint) from exc
    except Exception as exc:  # the environment's own code failed
        raise EvalRunError(
            run_dir,
            f"environment `{env}` fails at {where} (split {split!r}, seed {seed}): {type(exc).__name__}: "
            f"{_first_line(str(exc))}",
            hint=f"try it by hand: `envhub play {env} --split {split} --seed {seed}`",
        ) from exc
    finally:
        if instance is not None:
            try:
                instance.close()
            except Exception:
                pass  # closing a probe must not hide what it found


def _listed_models(response: Response) -> list[str] | None:
    """Model ids of a ``GET /models`` answer, or None when it is not an OpenAI model list."""
    if response.status_code != 200:
        return None
    try:
        data = response.json().get("data")
        return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (ValueError, AttributeError, TypeError):
        return None


def check_endpoint(
    base_url: str,
    model: str,
    *,
    api_key: str | None,
    run_dir: str,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> None:
    """The endpoint at ``base_url`` answers and serves ``model``; EvalRunError saying what is wrong."""
    start_hint = (
        f"start the server at {base_url} (`envhub serve-model --port 8000` serves the local model at "
        "http://127.0.0.1:8000/v1), or fix --base-url"
    )
    try:
        pool = ConnectionPool.for_url(base_url)
    except ValueError:
        raise EvalRunError(run_dir, f"--base-url {base_url!r} is not an http(s) URL", hint=start_hint) from None
    try:
        _probe(pool, base_url, model, api_key=api_key, run_dir=run_dir, timeout_s=timeout_s, start_hint=start_hint)
    finally:
        run_blocking(pool.aclose())


def _probe(
    pool: ConnectionPool, base_url: str, model: str, *, api_key: str | None, run_dir: str, timeout_s: float, start_hint: str
) -> None:
    models_url = base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = run_blocking(pool.request("GET", urlsplit(models_url).path, headers=headers, timeout=timeout_s))
    except (OSError, TimeoutError) as exc:  # refused, unreachable, timed out
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise EvalRunError(run_dir, f"the endpoint {base_url} does not answer ({reason})", hint=start_hint) from exc
    if response.status_code in (401, 403):
        raise EvalRunError(
            run_dir, f"the endpoint {base_url} refuses the API key (HTTP {response.status_code} for GET /models)",
            hint="set ENVHUB_API_KEY (or the variable named by --api-key-env) to a key it accepts",
        )  # fmt: skip
    listed = _listed_models(response)
    if listed is not None and model in listed:
        return
    body = {"model": model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1}
    try:
        chat_sync(pool, base_url, body, api_key=api_key, retry=RetryPolicy(max_retries=0, timeout_s=timeout_s))
    except EndpointError as exc:
        # the endpoint's own status (``status`` itself is being moved to the error's wire status)
        status = getattr(exc, "upstream_status", exc.status)
        if status is None:
            raise EvalRunError(run_dir, f"the endpoint {base_url} does not answer ({exc.reason})", hint=start_hint) from exc
        if status < 400 or status in RETRYABLE_STATUS or status >= 500:
            return  # busy, briefly failing, or an odd answer to one token: the run's retries are for that
        if status == 404 and listed is None:
            raise EvalRunError(
                run_dir, f"no OpenAI-compatible API at {base_url} (HTTP 404 for /models and /chat/completions)",
                hint="--base-url is the API root, usually ending in /v1 (e.g. http://127.0.0.1:8000/v1)",
            ) from exc  # fmt: skip
        served = f"; it lists {', '.join(listed)}" if listed else ""
        raise EvalRunError(
            run_dir, f"the endpoint {base_url} refuses model {model!r}: {_first_line(exc.reason)}{served}",
            hint=f"pass a model it serves with --model (GET {models_url} lists them)",
        ) from exc  # fmt: skip
