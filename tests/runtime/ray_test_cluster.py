"""A real multi-node Ray cluster on 127.0.0.1 for the ray runtime's tests: a head and worker nodes,
each a ``ray start --block`` process of its own, stopped by process group (never ``ray stop``, which
would stop every Ray process of this user)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Ray rewrites 127.0.0.1 to this machine's outward address; its nodes and drivers stay on loopback.
LOOPBACK_RAY = "import ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host"
LAUNCH = LOOPBACK_RAY + "; import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
NODE_FLAGS = ["--node-ip-address=127.0.0.1", "--object-store-memory=100000000", "--block", "--disable-usage-stats"]
STARTED = "Ray runtime started"


#: Ray turns token auth on for a node when ~/.ray/auth_token exists (a local ``ray.init`` writes it)
#: and leaves it off otherwise, so nodes and drivers would disagree: say it once, for all of them.
AUTH = {"RAY_AUTH_MODE": "disabled"}


def keep_ray_on_loopback() -> None:
    """Apply :data:`LOOPBACK_RAY` and :data:`AUTH` in this process (the driver)."""
    import ray._private.services as services

    os.environ.update(AUTH)
    services.resolve_ip_for_localhost = lambda host: host


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    proc: subprocess.Popen
    log: Path

    def wait_started(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while STARTED not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node did not start: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        """Every live process of this node (its process group; zombies waiting for their reaper aside)."""
        out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
        rows = (line.split() for line in out.splitlines())
        return [int(p) for p, g, stat in rows if int(g) == self.proc.pid and not stat.startswith("Z")]

    def raylet_pid(self) -> int:
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
        raise RuntimeError("no raylet in this node's process group")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    head: Node
    workers: list[Node] = field(default_factory=list)

    @classmethod
    def start(cls, *, workers: int = 2, timeout_s: float = 90.0) -> Cluster:
        temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths are limited
        port = _free_port()
        head = _spawn(temp_dir / "head.log", ["--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false", f"--temp-dir={temp_dir}"])
        cluster = cls(f"127.0.0.1:{port}", temp_dir, head)
        try:
            head.wait_started(timeout_s)
            for i in range(workers):  # one at a time: raylets registering together time out on 2 cores
                cluster.workers.append(_spawn(temp_dir / f"worker{i}.log", [f"--address={cluster.address}", "--num-cpus=1"]))
                cluster.workers[-1].wait_started(timeout_s)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        for node in [*self.workers, self.head]:
            node.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def live_pids(self, *, wait_s: float = 10.0) -> list[int]:
        """The cluster's processes still alive, after waiting up to ``wait_s`` for them to go."""
        deadline = time.monotonic() + wait_s
        while True:
            pids = [pid for node in [*self.workers, self.head] for pid in node.pids()]
            if not pids or time.monotonic() > deadline:
                return pids
            time.sleep(0.2)


def _spawn(log: Path, args: list[str]) -> Node:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "start", *args, *NODE_FLAGS],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **AUTH, "RAY_raylet_start_wait_time_s": "60"},
        )  # fmt: skip
    return Node(proc, log)
