"""Steps per second and step latency of envhub's runtimes, side by side with openenv-core.

One trivial echo environment (``tests/fixtures/echo``; its OpenEnv twin in ``runtimes_openenv.py``),
at 1, 64 and 1000 concurrent sessions, for:

- ``inprocess``: ``envhub.make(...)`` here; sessions stepped one after another (no I/O to overlap);
- ``process``: ``envhub serve`` in a child process, ``AsyncRemoteEnv`` clients over its Unix socket;
- ``docker``: the same server in a locked-down container (skipped with the reason when no engine);
- ``openenv``: openenv-core's FastAPI server (WebSocket sessions) in a child process, its async
  ``EnvClient``, over loopback TCP.

Every remote runtime serves all sessions from one server process, so the comparison is of one
server each. Each session runs episodes of 32 steps (reset between them, not timed) for
``--seconds`` seconds; steps/s counts completed steps, latencies are per step, seen by the client.
Client and server share this machine's cores. Each measurement runs in a fresh Python process, and
everything is measured ``--rounds`` times in turn (the machine's speed drifts by tens of percent);
each cell reports its median round. CPU time per step is counted over the timed steps, for the
client process and, where its process is on this machine (process, openenv), the server's: on a
busy machine it moves far less than steps/s. Results go to ``benchmarks/runtimes.md``.

    python benchmarks/runtimes.py                       # everything, 3 rounds: about 6-8 minutes
    python benchmarks/runtimes.py --runtimes process,openenv --concurrency 1,64 --seconds 2 --rounds 1
    python benchmarks/runtimes.py --openenv-protocol    # envhub serve's OpenEnv routes vs OpenEnv's server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ECHO = ROOT / "tests" / "fixtures" / "echo"
sys.path.insert(0, str(Path(__file__).resolve().parent))

EPISODE_STEPS = 32
ACTION = "hello, echo"


@dataclass
class Result:
    runtime: str
    sessions: int
    steps: int
    seconds: float
    latencies: list[float]
    setup_s: float
    note: str = ""
    #: Percentiles (ms) measured in a worker process, which sends these instead of every latency.
    percentiles: dict[int, float] | None = None
    #: CPU seconds (user + system) over the timed steps: the client's, and the server's where known.
    client_cpu_s: float | None = None
    server_cpu_s: float | None = None

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    def us_per_step(self, cpu_s: float | None) -> str:
        return f"{cpu_s / self.steps * 1e6:.0f}" if cpu_s is not None and self.steps else "-"

    def pct(self, q: int) -> float:
        if self.percentiles is not None:
            return self.percentiles[q]
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


# --- drivers ----------------------------------------------------------------------------------------


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process, or by process ``pid`` (from /proc)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_inprocess(n: int, seconds: float) -> Result:
    import envhub

    t0 = time.perf_counter()
    envs = [envhub.make(ECHO) for _ in range(n)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    setup = time.perf_counter() - t0
    turns = [0] * n
    latencies: list[float] = []
    steps = 0
    end = time.perf_counter() + seconds
    start, cpu = time.perf_counter(), cpu_s()
    while time.perf_counter() < end:
        for i, env in enumerate(envs):
            t = time.perf_counter()
            env.step(ACTION)
            latencies.append(time.perf_counter() - t)
            steps += 1
            turns[i] += 1
            if turns[i] == EPISODE_STEPS:
                env.reset()
                turns[i] = 0
    elapsed, cpu = time.perf_counter() - start, cpu_s() - cpu
    for env in envs:
        env.close()
    return Result("inprocess", n, steps, elapsed, latencies, setup, client_cpu_s=cpu)


async def _drive(n: int, seconds: float, open_one, step_one, reset_one, close_one, *, server_pid=None) -> tuple:
    """Run ``n`` sessions concurrently for ``seconds``; each is a coroutine loop of timed steps.

    Returns (steps, elapsed seconds, step latencies, seconds spent opening and resetting sessions,
    client CPU seconds, server CPU seconds or None); ``server_pid(clients)`` names the server's process.
    """
    t0 = time.perf_counter()
    clients = list(await asyncio.gather(*(open_one(i) for i in range(n))))
    await asyncio.gather(*(reset_one(c) for c in clients))
    setup = time.perf_counter() - t0
    gc.collect()
    gc.freeze()  # the sessions just opened live through the run: no full collections over them
    latencies: list[float] = []
    counts = [0]
    stop_at = time.perf_counter() + seconds

    async def loop(client) -> None:
        turn = 0
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await step_one(client)
            latencies.append(time.perf_counter() - t)
            counts[0] += 1
            turn += 1
            if turn == EPISODE_STEPS:
                await reset_one(client)
                turn = 0

    pid = server_pid(clients) if server_pid else None
    start, client_cpu, server_cpu = time.perf_counter(), cpu_s(), cpu_s(pid) if pid else None
    await asyncio.gather(*(loop(c) for c in clients))
    elapsed, client_cpu = time.perf_counter() - start, cpu_s() - client_cpu
    server_cpu = cpu_s(pid) - server_cpu if pid else None
    await asyncio.gather(*(close_one(c) for c in clients), return_exceptions=True)
    return counts[0], elapsed, latencies, setup, client_cpu, server_cpu


def run_envhub_remote(runtime: str, n: int, seconds: float) -> Result:
    import envhub
    from envhub.runtime.client import AsyncRemoteEnv
    from envhub.runtime.remote import pool_for

    t0 = time.perf_counter()
    pool = pool_for(runtime, envhub.locate(ECHO), {"sessions_per_server": 4096, "warm": 1})
    leases = [pool.lease() for _ in range(n)]  # one server: the first lease starts it

    async def main():
        return await _drive(
            n,
            seconds,
            lambda i: AsyncRemoteEnv.open(lease=leases[i]),
            lambda env: env.step(ACTION),
            lambda env: env.reset(),
            lambda env: env.close(),
            # a container's pid is its own namespace's: only the process runtime's is this machine's
            server_pid=(lambda envs: envs[0].server_info["server"]["pid"]) if runtime == "process" else None,
        )

    start_server = time.perf_counter() - t0
    steps, elapsed, latencies, setup, client_cpu, server_cpu = asyncio.run(main())
    return Result(runtime, n, steps, elapsed, latencies, start_server + setup, client_cpu_s=client_cpu, server_cpu_s=server_cpu)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_openenv(n: int, seconds: float) -> Result:
    """``n`` sessions of OpenEnv's own typed echo client against OpenEnv's own server."""
    from runtimes_openenv import EchoAction, EchoClient

    return _run_openenv_clients(
        "openenv", "openenv-server", n, seconds, EchoClient, EchoAction(message=ACTION), lambda obs: obs.message
    )


def measure_startup(runtime: str, repeats: int = 3) -> tuple[float, float]:
    """(cold, warm) seconds from ``envhub.make`` to a finished first ``reset``, medians of ``repeats``.

    Cold: no server of the pool is running (the image exists). Warm: the pool holds an idle one.
    """
    import envhub
    from envhub.runtime.remote import close_all_pools, pool_for

    cold, warm = [], []
    for _ in range(repeats):
        close_all_pools()  # pool_for then starts a new pool, with no server running
        t = time.perf_counter()
        env = envhub.make(ECHO, runtime=runtime, runtime_options={"warm": 1, "idle_ttl_s": 60})
        env.reset()
        cold.append(time.perf_counter() - t)
        env.close()
        pool_for(runtime, envhub.locate(ECHO)).prewarm(1)
        t = time.perf_counter()
        env = envhub.make(ECHO, runtime=runtime)
        env.reset()
        warm.append(time.perf_counter() - t)
        env.close()
    close_all_pools()
    return float(np.median(cold)), float(np.median(warm))


# --- report ---------------------------------------------------------------------------------------


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("envhub", "openenv-core", "uvicorn", "starlette", "fastapi", "httpx", "websockets", "docker"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{name} {version(name)}")
    return ", ".join(out)


def write_report(
    results: list[Result],
    skipped: dict[str, str],
    args: argparse.Namespace,
    load: tuple,
    path: Path,
    startup: dict[str, tuple[float, float]],
    rounds: dict[tuple[str, int], list[Result]],
) -> None:
    lines = [
        "# Runtime benchmark: envhub vs openenv-core",
        "",
        "Written by `python benchmarks/runtimes.py` (see its docstring for the method). A trivial echo",
        "environment; every remote runtime serves all sessions from one server process; each session",
        f"runs {EPISODE_STEPS}-step episodes for {args.seconds:g} s. Latency is per step, seen by the client.",
        f"Each cell is the median-throughput one of {args.rounds} rounds (every runtime measured once per round, in",
        "turn, each measurement in a fresh Python process).",
        "",
        f"- machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after "
        "(client and server share these cores; other work on the machine moves figures by tens of percent)",
        f"- versions: {versions()}",
        f"- run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| runtime | sessions | steps/s | p50 ms | p99 ms | setup s | client CPU µs/step | server CPU µs/step |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.runtime} | {r.sessions} | {r.steps_per_s:,.0f} | {r.pct(50):.2f} | {r.pct(99):.2f} | {r.setup_s:.1f} "
            f"| {r.us_per_step(r.client_cpu_s)} | {r.us_per_step(r.server_cpu_s)} |"
        )
    by = {(r.runtime, r.sessions): r for r in results}
    base = by.get(("openenv", 64))
    if base is not None:
        lines += ["", "Against the issue's goals (this run):", ""]
        for runtime in ("process", "docker"):
            r = by.get((runtime, 64))
            if r is not None:
                per_round = [
                    mine.steps_per_s / theirs.steps_per_s for mine, theirs in zip(rounds[(runtime, 64)], rounds[("openenv", 64)])
                ]
                p99s = [mine.pct(99) for mine in rounds[(runtime, 64)]]
                lines.append(
                    f"- {runtime} at 64 sessions: {r.steps_per_s / base.steps_per_s:.1f}x OpenEnv's throughput "
                    f"(goal 3x; round by round {', '.join(f'{x:.1f}x' for x in per_round)}); p99 {r.pct(99):.1f} ms "
                    f"(goal under 10 ms; every round: {', '.join(f'{x:.1f}' for x in p99s)} ms; OpenEnv {base.pct(99):.1f} ms)"
                )
        for runtime in ("process", "docker"):
            r = by.get((runtime, 1000))
            if r is not None:
                lines.append(f"- {runtime}: 1000 concurrent sessions held by one server, {r.steps:,} steps, no errors")
        if "docker" in startup:
            cold, warm = startup["docker"]
            lines.append(f"- docker: warm environment ready in {warm * 1000:,.0f} ms (goal under 1 s); cold {cold * 1000:,.0f} ms")
    if startup:
        lines += [
            "",
            "Time from `envhub.make(...)` to a finished first `reset()` (median of 3; the image already built):",
            "",
            "| runtime | cold: no server running | warm: an idle server in the pool |",
            "| --- | ---: | ---: |",
        ]
        for runtime, (cold, warm) in startup.items():
            lines.append(f"| {runtime} | {cold * 1000:,.0f} ms | {warm * 1000:,.0f} ms |")
    if skipped:
        lines += ["", "Not measured:"] + [f"- {k}: {v}" for k, v in skipped.items()]
    lines += [
        "",
        "How to read it: `setup` is starting the server when none is warm (the first row of each remote",
        "runtime; the docker one includes the image build check) plus opening and resetting every session.",
        "`inprocess` has no transport; sessions there are stepped one after another, so its latency is",
        "the environment's own cost.",
        "`process` and `docker` clients (`AsyncRemoteEnv`) send the steps issued in one event-loop tick",
        "as one HTTP request over a Unix socket (`/v1/batch`; JSON; each step a delta of the",
        "conversation), answered call by call as each finishes; `openenv` sends one WebSocket message",
        "per step over loopback TCP. Every envhub step runs the environment's code in the server's",
        "worker threads under a step timeout. With N sessions in a closed loop, latency is about",
        "N / throughput, so p99 at 64 sessions is bounded by how many steps per second the machine gives.",
        "The `docker` and `process` servers run the same code on different interpreters: Debian's optimised",
        "build in the base image, and this machine's (a pyenv build configured without `--enable-optimizations`).",
        "",
    ]
    # Sections written by hand below the report (notes, dated side-by-side runs) are kept.
    old = path.read_text() if path.exists() else ""
    kept = old[old.index("\n## ") + 1 :] if "\n## " in old else ""
    path.write_text("\n".join(lines) + kept)


def measure(runtime: str, n: int, seconds: float) -> Result:
    if runtime == "inprocess":
        return run_inprocess(n, seconds)
    if runtime in ("process", "docker"):
        return run_envhub_remote(runtime, n, seconds)
    if runtime == "openenv":
        return run_openenv(n, seconds)
    raise SystemExit(f"unknown runtime {runtime!r}")


def measure_in_fresh_process(runtime: str, n: int, seconds: float) -> Result:
    """``measure`` in a new interpreter, so that no measurement inherits an earlier one's heap,
    threads or servers (the runtime measured last would otherwise run in the most crowded process)."""
    cmd = [sys.executable, __file__, "--one", runtime, str(n), "--seconds", str(seconds)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return Result(runtime, n, data["steps"], data["seconds"], [], data["setup_s"], percentiles={50: data["p50"], 99: data["p99"]},
                  client_cpu_s=data["client_cpu_s"], server_cpu_s=data["server_cpu_s"])  # fmt: skip


# --- OpenEnv's protocol: envhub serve beside OpenEnv's own server (--openenv-protocol) ------------
#
# Both servers run the echo logic (tests/fixtures/echo; its OpenEnv twin in runtimes_openenv.py) in a
# child process on loopback TCP, and both are driven by OpenEnv's own async client (GenericEnvClient,
# the same class for both, one WebSocket per session) with the same action, {"message": ACTION}.

OPENENV_PROTOCOL = {
    # name: (what serves, how the echoed text is read from an observation)
    "envhub-openenv": ("envhub serve (its OpenEnv routes)", lambda obs: obs["messages"][0]["content"]),
    "openenv-server": ("OpenEnv's own server (FastAPI)", lambda obs: obs["message"]),
}


@contextlib.contextmanager
def openenv_protocol_server(runtime: str, max_sessions: int):
    """The server of ``runtime`` in a child process; yields (port, pid) once its /health answers."""
    port = _free_port()
    if runtime == "envhub-openenv":  # what `envhub serve` and the docker runtime's images run
        cmd = [sys.executable, "-m", "envhub.runtime.server", str(ECHO), "--host", "127.0.0.1", "--port", str(port),
               "--max-sessions", str(max_sessions)]  # fmt: skip
    else:
        cmd = [sys.executable, str(Path(__file__).with_name("runtimes_openenv.py")), str(port), str(max_sessions)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"{runtime} server exited: " + proc.stderr.read().decode()[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"{runtime} server did not start in 60 s")
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def run_openenv_protocol(runtime: str, n: int, seconds: float) -> Result:
    """``n`` sessions of OpenEnv's async generic client against the server of ``runtime``."""
    from openenv.core import GenericEnvClient

    _, echoed = OPENENV_PROTOCOL[runtime]
    return _run_openenv_clients(runtime, runtime, n, seconds, GenericEnvClient, {"message": ACTION}, echoed)


def _run_openenv_clients(name: str, server: str, n: int, seconds: float, client_class, action, echoed) -> Result:
    """``n`` OpenEnv clients of ``client_class`` stepping ``action`` on the ``server`` of OPENENV_PROTOCOL."""
    t0 = time.perf_counter()
    with openenv_protocol_server(server, max(n, 1)) as (port, pid):

        async def open_one(i):
            client = client_class(base_url=f"http://127.0.0.1:{port}", message_timeout_s=120)
            await client.connect()
            return client

        async def step_one(client):
            result = await client.step(action)
            assert echoed(result.observation) == ACTION, result.observation

        async def main():
            return await _drive(n, seconds, open_one, step_one, lambda c: c.reset(), lambda c: c.close(),
                                server_pid=lambda clients: pid)  # fmt: skip

        start_server = time.perf_counter() - t0
        steps, elapsed, latencies, setup, client_cpu, server_cpu = asyncio.run(main())
    return Result(name, n, steps, elapsed, latencies, start_server + setup, client_cpu_s=client_cpu, server_cpu_s=server_cpu)


def measure_openenv_protocol_in_fresh_process(runtime: str, n: int, seconds: float) -> Result:
    cmd = [sys.executable, __file__, "--one-openenv-protocol", runtime, str(n), "--seconds", str(seconds)]
    data = json.loads(subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout.strip().splitlines()[-1])
    return Result(runtime, n, data["steps"], data["seconds"], [], data["setup_s"], percentiles={50: data["p50"], 99: data["p99"]},
                  client_cpu_s=data["client_cpu_s"], server_cpu_s=data["server_cpu_s"])  # fmt: skip


def alternate_rounds(
    args: argparse.Namespace,
    runtimes: list[str],
    levels: list[int],
    measure: Callable[[str, int, float], Result],
    extra: Callable[[Result], str],
) -> dict[tuple[str, int], list[Result]]:
    """Every (runtime, sessions) cell measured once a round, rounds in turn, not one runtime's repeats
    back to back, so that a slow spell of the machine falls on every runtime alike."""
    rounds: dict[tuple[str, int], list[Result]] = {}
    for round_no in range(1, args.rounds + 1):
        for runtime in runtimes:
            for n in levels:
                print(f"round {round_no} {runtime:>14} x {n:<5}", end=" ", flush=True)
                r = measure(runtime, n, args.seconds)
                rounds.setdefault((runtime, n), []).append(r)
                print(f"{r.steps_per_s:9,.0f} steps/s  p50 {r.pct(50):7.2f} ms  p99 {r.pct(99):7.2f} ms{extra(r)}")
    return rounds


def compare_openenv_protocol(args: argparse.Namespace, levels: list[int]) -> None:
    """Rounds in turn (each measurement in a fresh process), medians, and a dated section of runtimes.md."""
    load_before = os.getloadavg()
    rounds = alternate_rounds(args, OPENENV_PROTOCOL, levels, measure_openenv_protocol_in_fresh_process,
                              lambda r: "")  # fmt: skip
    write_openenv_protocol_section(rounds, levels, args, (load_before, os.getloadavg()), args.out)
    print(f"wrote the OpenEnv-protocol section of {args.out}")


OPENENV_SECTION = "## OpenEnv's protocol: envhub serve beside OpenEnv's own server"


def write_openenv_protocol_section(rounds, levels, args, load, path: Path) -> None:
    """Replace (or add) the OpenEnv-protocol section at the end of ``path``; the rest is kept."""
    from importlib.metadata import PackageNotFoundError, version

    def median(runs: list[Result]) -> Result:
        return sorted(runs, key=lambda r: r.steps_per_s)[len(runs) // 2]

    names = []
    for name in ("envhub", "openenv", "uvicorn", "starlette", "fastapi", "websockets", "orjson", "uvloop"):
        with contextlib.suppress(PackageNotFoundError):
            names.append(f"{name} {version(name)}")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"{OPENENV_SECTION} ({when})",
        "",
        "Written by `python benchmarks/runtimes.py --openenv-protocol`. The same echo logic behind each server,",
        "each in a child process on loopback TCP; both driven by OpenEnv's own async client",
        f"(`GenericEnvClient`, one WebSocket per session, `{{\"message\": ...}}` actions), {EPISODE_STEPS}-step episodes",
        f"for {args.seconds:g} s per measurement. Each cell is the median-throughput one of {args.rounds} rounds, the",
        "servers measured in turn within each round, each measurement in a fresh Python process.",
        "CPU is per step, user + system, of the client's process and of the server's.",
        "",
        f"- machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load[0])} "
        f"before, {', '.join(f'{x:.2f}' for x in load[1])} after (client and server share these cores)",
        f"- versions: {', '.join(names)}",
        "",
        "| server | sessions | steps/s | p50 ms | p99 ms | client CPU µs/step | server CPU µs/step | steps/s, every round |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for runtime, (label, _) in OPENENV_PROTOCOL.items():
        for n in levels:
            runs = rounds.get((runtime, n))
            if not runs:
                continue
            r = median(runs)
            every = ", ".join(f"{x.steps_per_s:,.0f}" for x in runs)
            lines.append(f"| {label} | {n} | {r.steps_per_s:,.0f} | {r.pct(50):.2f} | {r.pct(99):.2f} | "
                         f"{r.us_per_step(r.client_cpu_s)} | {r.us_per_step(r.server_cpu_s)} | {every} |")  # fmt: skip
    lines += ["", "Against the issue's goal (envhub's OpenEnv endpoint at least as fast as OpenEnv's own server):", ""]
    for n in levels:
        mine, theirs = rounds.get(("envhub-openenv", n)), rounds.get(("openenv-server", n))
        if not mine or not theirs:
            continue
        ratio = median(mine).steps_per_s / median(theirs).steps_per_s
        per_round = ", ".join(f"{a.steps_per_s / b.steps_per_s:.2f}x" for a, b in zip(mine, theirs))
        verdict = "met" if ratio >= 1 else "NOT met"
        lines.append(f"- {n} session(s): {ratio:.2f}x OpenEnv's throughput ({verdict}; round by round {per_round}); "
                     f"p99 {median(mine).pct(99):.2f} ms against {median(theirs).pct(99):.2f} ms")  # fmt: skip
    lines += [
        "",
        "envhub's steps run the environment in the server's worker threads under the step timeout, as on",
        "its own protocol; OpenEnv's server runs each session's steps on that session's own thread.",
        "",
    ]
    text = path.read_text() if path.is_file() else ""
    if OPENENV_SECTION in text:
        text = text[: text.index(OPENENV_SECTION)]
    path.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtimes", default="inprocess,process,docker,openenv")
    p.add_argument("--concurrency", default="1,64,1000")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("runtimes.md"))
    p.add_argument("--rounds", type=int, default=3, help="measure everything this many times, in turn; report the median")
    p.add_argument("--one", nargs=2, metavar=("RUNTIME", "SESSIONS"), help=argparse.SUPPRESS)  # a worker's measurement
    p.add_argument("--openenv-protocol", action="store_true",
                   help="instead: envhub serve's OpenEnv routes beside OpenEnv's own server, at 1 and 64 sessions")
    p.add_argument("--one-openenv-protocol", nargs=2, metavar=("SERVER", "SESSIONS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one_openenv_protocol:
        r = run_openenv_protocol(args.one_openenv_protocol[0], int(args.one_openenv_protocol[1]), args.seconds)
        print(json.dumps({"steps": r.steps, "seconds": r.seconds, "setup_s": r.setup_s, "p50": r.pct(50), "p99": r.pct(99),
                          "client_cpu_s": r.client_cpu_s, "server_cpu_s": r.server_cpu_s}))  # fmt: skip
        return
    if args.openenv_protocol:
        given = args.concurrency != p.get_default("concurrency")
        compare_openenv_protocol(args, [int(c) for c in args.concurrency.split(",")] if given else [1, 64])
        return
    if args.one:
        r = measure(args.one[0], int(args.one[1]), args.seconds)
        if args.one[0] in ("process", "docker"):
            from envhub.runtime.remote import close_all_pools

            close_all_pools()
        print(json.dumps({"steps": r.steps, "seconds": r.seconds, "setup_s": r.setup_s, "p50": r.pct(50), "p99": r.pct(99),
                          "client_cpu_s": r.client_cpu_s, "server_cpu_s": r.server_cpu_s}))  # fmt: skip
        return
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    levels = [int(c) for c in args.concurrency.split(",")]
    results: list[Result] = []
    skipped: dict[str, str] = {}
    load_before = os.getloadavg()[0]
    if "docker" in runtimes:
        from envhub.errors import EnvhubError

        try:
            from envhub.runtime.images import build_image, docker_client

            build_image(ECHO, client=docker_client())
        except EnvhubError as exc:
            skipped["docker"] = str(exc)
            runtimes.remove("docker")
    # Each cell reports its median-throughput round.
    rounds = alternate_rounds(args, runtimes, levels, measure_in_fresh_process,
                              lambda r: f"  setup {r.setup_s:.1f} s  CPU µs/step client {r.us_per_step(r.client_cpu_s)} "
                                        f"server {r.us_per_step(r.server_cpu_s)}")  # fmt: skip
    for runs in rounds.values():
        results.append(sorted(runs, key=lambda r: r.steps_per_s)[len(runs) // 2])
    startup = {}
    for runtime in ("process", "docker"):
        if runtime in runtimes:
            print(f"{runtime:>9} startup", end=" ", flush=True)
            startup[runtime] = measure_startup(runtime)
            print(f"cold {startup[runtime][0] * 1000:,.0f} ms, warm {startup[runtime][1] * 1000:,.0f} ms")
    write_report(results, skipped, args, (load_before, os.getloadavg()[0]), args.out, startup, rounds)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
