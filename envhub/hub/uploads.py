"""Uploads within a memory bound: a body goes to a scratch file as it arrives (hashed on the way),
at most ``limit`` uploads are received at once, and scratch left by a crashed process is removed
when the next one starts.

Each process keeps its scratch in a folder of its own that it holds a lock on for its whole life;
a folder whose lock anyone can take belongs to a process that is gone, so starting replicas and
workers that share a data folder never remove each other's files.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from anyio import to_thread

from envhub.errors import PayloadTooLargeError, UploadsBusyError

LOCK = ".lock"
WRITE_BATCH = 256 << 10  # bytes gathered from the socket before one write to disk


class ScratchSpace:
    """This process's scratch folder under ``root`` (created, locked, and swept of dead ones)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.removed = self._sweep()
        self.folder = self.root / f"{os.getpid()}-{secrets.token_hex(4)}"
        self.folder.mkdir()
        self._lock = open(self.folder / LOCK, "w")  # held (and locked) until the process ends
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _sweep(self) -> int:
        """Remove the folders no living process holds; returns how many files were in them."""
        removed = 0
        for folder in self.root.iterdir():
            if not folder.is_dir():
                folder.unlink(missing_ok=True)
                continue
            try:
                with open(folder / LOCK, "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken: its owner is gone
                    removed += sum(1 for p in folder.rglob("*") if p.is_file() and p.name != LOCK)
                    shutil.rmtree(folder, ignore_errors=True)
            except BlockingIOError:
                continue  # a live process's
            except FileNotFoundError:
                shutil.rmtree(folder, ignore_errors=True)
        return removed

    def path(self, stem: str) -> Path:
        """A fresh path in this process's folder (the caller removes what it writes there)."""
        return self.folder / f"{stem}-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Received:
    path: Path
    size: int
    digest: str


class UploadSlots:
    """At most ``limit`` uploads received at once in this process; the next waits ``wait_s`` for a
    slot, then is refused with 503 and Retry-After (its body stays unread in the socket meanwhile)."""

    def __init__(self, limit: int, *, wait_s: float = 30.0) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self._slots = asyncio.Semaphore(limit)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.wait_s)
        except asyncio.TimeoutError:
            raise UploadsBusyError(self.limit, retry_after=max(1, round(self.wait_s))) from None
        try:
            yield
        finally:
            self._slots.release()


async def receive(chunks: AsyncIterator[bytes], path: Path, *, max_bytes: int) -> Received:
    """Write a request body to ``path`` as it arrives, hashing it, holding at most ``WRITE_BATCH``
    bytes; over ``max_bytes`` is PayloadTooLargeError. The file is removed on any failure."""
    digest = hashlib.sha256()
    size = 0
    batch: list[bytes] = []
    pending = 0
    f = await to_thread.run_sync(open, path, "wb")
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLargeError(None, max_bytes)
            digest.update(chunk)
            batch.append(chunk)
            pending += len(chunk)
            if pending >= WRITE_BATCH:
                await to_thread.run_sync(f.write, b"".join(batch))
                batch, pending = [], 0
        if batch:
            await to_thread.run_sync(f.write, b"".join(batch))
        await to_thread.run_sync(_flush, f)
    except BaseException:
        f.close()
        path.unlink(missing_ok=True)
        raise
    f.close()
    return Received(path, size, "sha256:" + digest.hexdigest())


def _flush(f) -> None:
    f.flush()
    os.fsync(f.fileno())
