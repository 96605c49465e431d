"""The ``process`` runtime: the environment's server in a child process, on a Unix socket.

The child is ``python -m envhub.runtime.server FOLDER`` with this interpreter. It caps its own data memory
at ``[limits] memory_mb`` past what it uses at start (an allocation beyond fails with MemoryError,
reported as that episode's environment failure), bounds every step by ``step_timeout_s``, and exits
when this process is gone. A crash of the child ends the episodes it held with
:class:`~envhub.errors.RuntimeDiedError`; the next ``reset`` of those environments starts a new child.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from envhub.identity.manifest import Manifest
from envhub.runtime.pool import ManagedServer

#: Variables that keep numeric libraries from starting a thread per core in every child.
QUIET_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        extra = " (killed: out of memory, or stopped from outside)" if -code == signal.SIGKILL else ""
        return f"the server process was killed by {name}{extra}"
    return f"the server process exited with code {code}"


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("; last output: " + " | ".join(text)) if text else ""


class ProcessServer(ManagedServer):
    """``python -m envhub.runtime.server`` in a child process."""

    def __init__(self, folder: Path, manifest: Manifest, digest: str, *, threads: int = 16) -> None:
        super().__init__()
        self.env_ref = manifest.ref
        self.dir = Path(tempfile.mkdtemp(prefix="envhub-proc-"))
        self.uds = str(self.dir / "env.sock")
        self.log_path = self.dir / "server.log"
        cmd = [
            sys.executable, "-m", "envhub.runtime.server", str(folder),
            "--uds", self.uds,
            "--digest", digest,
            "--memory-mb", str(manifest.limits.memory_mb),
            "--threads", str(threads),
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", **QUIET_THREADS}
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._reason: str | None = None

    def exit_reason(self) -> str | None:
        if self._reason is None:
            code = self.proc.poll()
            if code is not None:
                self._reason = describe_exit(code) + log_tail(self.log_path)
        return self._reason

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3.0)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<ProcessServer {self.env_ref} pid={self.proc.pid} sessions={self.sessions}>"
