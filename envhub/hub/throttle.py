"""A bound on failed authentication: each client (its address, as the server sees it after any
trusted proxy) may fail so many times per window; past that, every request it sends with a token is
refused with 429 and ``Retry-After`` until its oldest failure in the window ages out. Kept in memory
per process: with ``--workers N`` each worker counts on its own (a client gets at most N times the
limit), which still turns a guessing run of thousands per second into a handful per minute."""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from envhub.errors import TooManyRequestsError


class FailureThrottle:
    def __init__(self, *, limit: int = 20, window_s: float = 60.0, max_clients: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients  # the table never grows without bound, whoever sends
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        failures = self._failures.get(client)
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if failures is not None and not failures:
            del self._failures[client]
            return None
        return failures

    def check(self, client: str) -> None:
        """Raise :class:`TooManyRequestsError` while ``client`` is over the limit."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(client, now)
            if failures is not None and len(failures) >= self.limit:
                raise TooManyRequestsError(max(1, math.ceil(failures[0] + self.window_s - now)))

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            if client not in self._failures and len(self._failures) >= self.max_clients:
                for key in list(self._failures)[: self.max_clients // 10]:  # the oldest-inserted tenth
                    del self._failures[key]
            failures = self._failures.setdefault(client, deque())
            failures.append(now)
            while len(failures) > self.limit:
                failures.popleft()
