"""A byte-for-byte relay between a TCP address and a Unix socket, either way round.

An imported OpenEnv image runs with no network, like every envhub container: its server listens on
TCP inside the container's own network namespace, which nothing outside can reach. Two relays join
it to OpenEnv's client, which speaks TCP only: one inside the container (Unix socket in the mounted
folder -> the server's port), started with ``docker exec``, and one here (a loopback port -> that
socket). This module needs only the standard library, so the container's own Python runs it::

    python3 -c "$(cat relay.py)" unix:/run/envhub/openenv.sock tcp:127.0.0.1:8000
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable

CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(RuntimeError):  # the loop is closing
            writer.close()


async def _open(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    kind, _, where = address.partition(":")
    if kind == "unix":
        return await asyncio.open_unix_connection(where)
    host, _, port = where.rpartition(":")
    return await asyncio.open_connection(host, int(port))


async def _listen(address: str, connect: str) -> asyncio.base_events.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            far_reader, far_writer = await _open(connect)
        except OSError:
            writer.close()  # the far side is not up (yet): the caller sees a closed connection
            return
        await asyncio.gather(_pipe(reader, far_writer), _pipe(far_reader, writer))

    kind, _, where = address.partition(":")
    if kind == "unix":
        return await asyncio.start_unix_server(handle, path=where)
    host, _, port = where.rpartition(":")
    return await asyncio.start_server(handle, host, int(port))


class Relay:
    """A relay served from a thread of this process until :meth:`stop`; ``port`` is the TCP port
    it listens on when ``listen`` is ``tcp:HOST:0``."""

    def __init__(self, listen: str, connect: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        started = threading.Event()
        self.port: int | None = None
        self._error: BaseException | None = None

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                server = await _listen(listen, connect)
            except BaseException as exc:  # reported to the constructor below
                self._error = exc
                started.set()
                return
            self.port = server.sockets[0].getsockname()[1] if listen.startswith("tcp:") else None
            started.set()
            await self._stop.wait()
            server.close()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:  # connections still open: end them before the loop closes
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        self._thread = threading.Thread(target=lambda: self._loop.run_until_complete(main()), name="envhub-relay", daemon=True)
        self._thread.start()
        started.wait(10)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        stop = self._stop
        if stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(10)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()


def serve_forever(listen: str, connect: str, *, ready: Callable[[], None] = lambda: None) -> None:
    """Relay until the process is stopped (the container's side)."""

    async def main() -> None:
        server = await _listen(listen, connect)
        ready()
        await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    serve_forever(sys.argv[1], sys.argv[2])
