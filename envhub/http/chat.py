"""Calls to OpenAI-compatible chat endpoints, with retries, backoff and a rate limit.

Shared by the endpoint policy (async, many episodes at once) and the LLM judge (sync, called from a
rubric). What is retried: timeouts, connection errors, 429 and 5xx answers, and bodies that are not
the JSON of a chat completion. What is not: other 4xx answers (a wrong model name or key does not get
better by asking again). The delay doubles from ``backoff_s`` with jitter, and a ``Retry-After``
header is honoured up to ``max_backoff_s``.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from envhub import _json
from envhub.errors import EndpointError
from envhub.http.transport import ConnectionPool, Response, run_blocking

#: Statuses worth asking again.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: Variable the endpoint policy reads its API key from (``OPENAI_API_KEY`` is the fallback).
API_KEY_ENV = "ENVHUB_API_KEY"


def api_key_from_env(name: str | None = None) -> str | None:
    """The API key in ``$name``, else ``$ENVHUB_API_KEY``, else ``$OPENAI_API_KEY``."""
    for var in (name, API_KEY_ENV, "OPENAI_API_KEY"):
        if var and os.environ.get(var):
            return os.environ[var]
    return None


@dataclass
class RetryPolicy:
    """How often and how patiently to ask again."""

    max_retries: int = 4
    """Attempts after the first."""
    backoff_s: float = 0.5
    """First delay; each retry doubles it."""
    max_backoff_s: float = 20.0
    """Cap on one delay, ``Retry-After`` included."""
    timeout_s: float = 120.0
    """Per-request timeout (connect, read and write)."""

    def delay(self, attempt: int, response: Response | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if response is not None:
            after = response.headers.get("retry-after")
            if after:
                try:
                    return min(max(float(after), 0.0), self.max_backoff_s)
                except ValueError:
                    pass
        base = self.backoff_s * (2**attempt)
        return min(base * (0.5 + random.random() / 2), self.max_backoff_s)


class RateLimiter:
    """At most ``rate`` request starts per second (token bucket of size 1); ``None`` means no limit.

    Usable from threads and from asyncio alike: ``reserve()`` books the next slot and says how long to
    wait for it.
    """

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate}")
        self.interval = 0.0 if rate is None else 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        if self.interval == 0.0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
            return slot - now


@dataclass
class ChatResult:
    """One chat completion: its text, why it stopped, token usage and how long the endpoint took."""

    text: str
    finish_reason: str | None
    usage: dict[str, Any] = field(default_factory=dict)
    latency_s: float = 0.0
    attempts: int = 1


def _parse_completion(response: Any) -> tuple[str, str | None, dict[str, Any]]:
    """Text, finish reason and usage of a chat completion body; ValueError when it is not one."""
    try:
        data = response.json()
    except ValueError as exc:
        raise ValueError(f"the body is not JSON: {response.text[:120]!r}") from exc
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"not a chat completion (no choices[0].message.content): {str(data)[:120]!r}") from exc
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError(f"choices[0].message.content is {type(text).__name__}, expected a string")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return text, choice.get("finish_reason"), usage


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def chat_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/chat/completions"


class _Attempt:
    """Classifies one attempt's outcome; shared by the sync and async loops."""

    def __init__(self, url: str, retry: RetryPolicy) -> None:
        self.url = url
        self.retry = retry
        self.last_reason = "no attempt made"
        self.last_status: int | None = None

    def outcome(self, response: Response | None, exc: Exception | None, attempt: int, started: float):
        """(result or None, delay before the next try or None to give up now)."""
        if exc is not None:
            self.last_reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.last_status = None
            return None, self.retry.delay(attempt)
        assert response is not None
        self.last_status = response.status_code
        if response.status_code >= 400:
            self.last_reason = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code not in RETRYABLE_STATUS:
                return None, None
            return None, self.retry.delay(attempt, response)
        try:
            text, finish, usage = _parse_completion(response)
        except ValueError as bad:
            self.last_reason = f"malformed answer: {bad}"
            return None, self.retry.delay(attempt)
        return ChatResult(text, finish, usage, time.perf_counter() - started, attempt + 1), 0.0

    def error(self, attempts: int) -> EndpointError:
        return EndpointError(self.url, self.last_reason, status=self.last_status, attempts=attempts)


def chat_sync(pool: ConnectionPool, base_url: str, body: dict[str, Any], **options: Any) -> ChatResult:
    """:func:`chat_async` (``options``: its keywords) for blocking callers, a judge inside a rubric:
    the request runs on envhub's I/O thread (:func:`~envhub.http.transport.run_blocking`) while
    this thread waits."""
    return run_blocking(chat_async(pool, base_url, body, **options))


async def chat_async(
    pool: ConnectionPool,
    base_url: str,
    body: dict[str, Any],
    *,
    api_key: str | None = None,
    retry: RetryPolicy | None = None,
    limiter: RateLimiter | None = None,
) -> ChatResult:
    """POST one chat completion through ``pool`` (connections to the endpoint's origin), retrying
    as the module docstring says; EndpointError when it never comes."""
    retry = retry or RetryPolicy()
    url = chat_url(base_url)
    path, data, headers = urlsplit(url).path, _json.dumps(body), {"accept": "application/json", **_headers(api_key)}
    state = _Attempt(url, retry)
    for attempt in range(retry.max_retries + 1):
        if limiter is not None:
            wait = limiter.reserve()
            if wait:
                await asyncio.sleep(wait)
        started = time.perf_counter()
        try:
            response = await pool.request("POST", path, data, headers=headers, timeout=retry.timeout_s)
            result, delay = state.outcome(response, None, attempt, started)
        except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
            result, delay = state.outcome(None, exc, attempt, started)
        if result is not None:
            return result
        if delay is None or attempt == retry.max_retries:
            raise state.error(attempt + 1)
        await asyncio.sleep(delay)
    raise state.error(retry.max_retries + 1)
