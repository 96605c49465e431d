"""uvicorn as the session server runs it: every connection must send its request headers in time.

uvicorn bounds the wait between requests on a kept-alive connection, but any byte restarts that
wait, and it sets no deadline at all on a new connection: a client trickling a header one byte at a
time, or sending none, holds its socket forever, and a few hundred such clients exhaust the
server's file descriptors. :func:`header_deadline_protocol` closes a connection whose request's
headers have not all arrived ``header_timeout_s`` after it opened, or after the request's first
bytes on a kept-alive one. The body's own deadline is the app's
(:func:`envhub.runtime.server.requests.read_body`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("envhub.runtime.server")


def header_deadline_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with a deadline on headers."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    base: Any = AutoHTTPProtocol

    class HeaderDeadlineProtocol(base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None
        #: The request cycle that was the connection's last when the deadline was set.
        _deadline_cycle: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            # The first bytes of a request after an answer start its clock (the idle wait before
            # them is uvicorn's keep-alive timeout).
            between_requests = self.cycle is None or self.cycle.response_complete
            if between_requests and (self._deadline is None or self._deadline_cycle is not self.cycle):
                self._arm()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline_cycle = self.cycle
            self._deadline = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_late(self) -> None:
            # A new request's headers arrived since the deadline was set (a new cycle), or the
            # connection became a WebSocket's: nothing to do.
            self._deadline = None
            if self.cycle is not self._deadline_cycle or self.transport.is_closing() or self.transport.get_protocol() is not self:
                return
            log.info("closing a connection from %s: no complete request headers within %g s", self.client, header_timeout_s)
            self.transport.close()

    return HeaderDeadlineProtocol


def uvicorn_config(app: Any, *, header_timeout_s: float, **options: Any) -> Any:
    """A ``uvicorn.Config`` for ``app`` whose connections have ``header_timeout_s`` to send headers."""
    import uvicorn

    return uvicorn.Config(app, http=header_deadline_protocol(header_timeout_s), **options)
