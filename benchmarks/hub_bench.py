"""Benchmarks of the registries and the hub server (issue 4), written to benchmarks/hub.md.

    python benchmarks/hub_bench.py            # about a minute on 2 CPU cores

What is measured, each on loopback against a real ``envhub hub serve`` in its own process, with a
real SQLite file and artifacts on local disk:

1. a pull of a version already in the local registry (resolve over HTTP + re-hash of the cached
   artifact), from the hub, from a static registry served by ``python -m http.server``, and from the
   bundled environments; target < 50 ms;
2. publish plus pull of a 10 MB environment (incompressible data, so 10 MB really travel); target < 1 s;
3. 100 concurrent pull clients (threads, each with its own connection), every pull digest-checked;
   target: no errors.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envhub.identity.artifact import pack_bytes  # noqa: E402
from envhub.runtime.make import pull  # noqa: E402
from envhub.registry.http import HubRegistry, StaticHttpRegistry  # noqa: E402
from envhub.registry.local import LocalRegistry  # noqa: E402
from envhub.registry.static import bundled_registry, export_static  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def envhub_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from envhub.cli import main; main()", *args]


def make_env(parent: Path, name: str, *, payload: int = 0, version: str = "1.0.0") -> Path:
    folder = parent / f"{name}-{version}"
    shutil.copytree(ROOT / "environments" / "arithmetic", folder, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    toml = (folder / "envhub.toml").read_text()
    toml = toml.replace('namespace = "envhub"', 'namespace = "bench"').replace('name = "arithmetic"', f'name = "{name}"')
    toml = toml.replace('version = "1.0.0"', f'version = "{version}"')
    (folder / "envhub.toml").write_text(toml)
    if payload:
        (folder / "data.bin").write_bytes(os.urandom(payload))
    return folder


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the benchmark's output is the report
        pass


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2), "max_ms": round(ms[-1], 2)}


class Hub:
    def __init__(self, data: Path, *, workers: int = 1, token: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if token is None:
            made = subprocess.run(envhub_cmd("hub", "adduser", "bench", "--data", str(data)), capture_output=True, text=True, check=True)
            token = made.stdout.strip().splitlines()[-1]
        self.token = token
        cmd = envhub_cmd("hub", "serve", "--data", str(data), "--port", str(self.port), "--workers", str(workers))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("hub did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def concurrent_pulls(hub: Hub, clients: int, pulls_per_client: int) -> dict:
    """``clients`` threads start together and each fetch (download + digest check) the same version."""
    entry, version = HubRegistry(hub.url).resolve("bench/small@1.0.0")
    before = len(HubRegistry(hub.url, token=hub.token).audit_log("bench", limit=10_000))
    barrier = threading.Barrier(clients)

    def one_client(_: int) -> tuple[int, list[float]]:
        errors, times = 0, []
        reg = HubRegistry(hub.url, token=hub.token)
        barrier.wait()
        for _ in range(pulls_per_client):
            t = time.perf_counter()
            try:
                reg.fetch(entry, version)
            except Exception:  # noqa: BLE001 - counted
                errors += 1
            times.append((time.perf_counter() - t) * 1000)
        return errors, times

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - t0
    all_times = [t for _, ts in outcomes for t in ts]
    audited = len(HubRegistry(hub.url, token=hub.token).audit_log("bench", limit=10_000)) - before
    return {
        "clients": clients, "pulls": len(all_times), "errors": sum(e for e, _ in outcomes),
        "wall_s": round(wall, 2), "pulls_per_s": round(len(all_times) / wall, 1), **summary(all_times),
        "audit_events": audited,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "hub.md")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--pulls-per-client", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="envhub-bench-"))
    os.environ["ENVHUB_HOME"] = str(work / "home")
    for var in ("ENVHUB_REGISTRY", "ENVHUB_TOKEN", "ENVHUB_LOCKFILE"):
        os.environ.pop(var, None)
    hub = Hub(work / "hub-data")
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_at_start": round(os.getloadavg()[0], 2),  # the machine may be shared: read the numbers with it
    }
    try:
        client = HubRegistry(hub.url, token=hub.token)
        small = make_env(work, "small")
        client.publish(small)

        # 1. cached pulls
        pull("bench/small@^1", source=client)
        results["cached_pull_hub"] = summary(timed(lambda: pull("bench/small@^1", source=client), 100))
        site = work / "site"
        export_static(LocalRegistry(), site)
        handler = functools.partial(QuietHandler, directory=str(site))
        static_server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=static_server.serve_forever, daemon=True).start()
        static_url = f"http://127.0.0.1:{static_server.server_address[1]}"
        results["cached_pull_static_http"] = summary(
            timed(lambda: pull("bench/small@^1", source=StaticHttpRegistry(static_url)), 100)
        )
        bundled = bundled_registry()
        pull("arithmetic", source=bundled)
        results["cached_pull_bundled"] = summary(timed(lambda: pull("arithmetic", source=bundled), 100))

        # 2. publish + pull of 10 MB
        rounds = []
        for i in range(5):
            folder = make_env(work, f"big{i}", payload=10 << 20)
            t0 = time.perf_counter()
            data = pack_bytes(folder)
            t1 = time.perf_counter()
            client.publish_bytes(data, namespace="bench", name=f"big{i}", version="1.0.0")
            t2 = time.perf_counter()
            pull(f"bench/big{i}@1.0.0", source=HubRegistry(hub.url))
            t3 = time.perf_counter()
            rounds.append({"artifact_mb": round(len(data) / 2**20, 2), "pack_ms": (t1 - t0) * 1000, "publish_ms": (t2 - t1) * 1000, "pull_ms": (t3 - t2) * 1000})
        results["publish_pull_10mb"] = {
            key: round(statistics.median(r[key] for r in rounds), 1) for key in ("artifact_mb", "pack_ms", "publish_ms", "pull_ms")
        }
        r = results["publish_pull_10mb"]
        r["publish_plus_pull_ms"] = round(r["publish_ms"] + r["pull_ms"], 1)
        r["pack_publish_pull_ms"] = round(r["pack_ms"] + r["publish_ms"] + r["pull_ms"], 1)

        # 3. concurrent pull clients, on this one-worker hub and on a two-worker hub over the same data
        results["concurrent_pulls"] = concurrent_pulls(hub, args.clients, args.pulls_per_client)
        hub.stop()
        hub = Hub(work / "hub-data", workers=2, token=hub.token)
        results["concurrent_pulls_2_workers"] = concurrent_pulls(hub, args.clients, args.pulls_per_client)
        static_server.shutdown()
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)

    (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=2) + "\n")
    write_report(args.out, results)
    print(json.dumps(results, indent=2))


def write_report(path: Path, r: dict) -> None:
    c1, c2, c3 = r["cached_pull_hub"], r["cached_pull_static_http"], r["cached_pull_bundled"]
    p, cc, c2w = r["publish_pull_10mb"], r["concurrent_pulls"], r["concurrent_pulls_2_workers"]
    ok = lambda cond: "yes" if cond else "**no**"  # noqa: E731
    text = f"""# Hub and registry benchmarks

Produced by `python benchmarks/hub_bench.py` (raw numbers in `hub.json`). Machine: {r['machine']};
1-minute load average when it started: {r['load_average_at_start']} (the machine was shared with other work).
Everything runs on loopback against a real `envhub hub serve` in its own process (SQLite file,
artifacts on local disk), with the client in another process; the CPU is shared with the server.

## 1. Pull of a cached version (target < 50 ms, digest check included)

`envhub.pull(id, source=...)` when the version is already in the local registry: the id is resolved
against the source (one HTTP request for the hub and the static registry) and the cached artifact is
re-hashed against its digest. 100 runs each.

| source | median | p95 | max | under 50 ms |
|---|---|---|---|---|
| hub server (`GET /api/v1/envs/...`) | {c1['median_ms']} ms | {c1['p95_ms']} ms | {c1['max_ms']} ms | {ok(c1['p95_ms'] < 50)} |
| static registry over HTTP (`python -m http.server`, `registry.json`) | {c2['median_ms']} ms | {c2['p95_ms']} ms | {c2['max_ms']} ms | {ok(c2['p95_ms'] < 50)} |
| bundled environments (no network) | {c3['median_ms']} ms | {c3['p95_ms']} ms | {c3['max_ms']} ms | {ok(c3['p95_ms'] < 50)} |

## 2. Publish plus pull of a 10 MB environment (target < 1 s)

An environment folder with 10 MiB of random bytes (incompressible: the artifact is {p['artifact_mb']} MiB).
Publish = upload; the server hashes it, unpacks it by the safe rules to check the manifest, stores it
and records the version. Pull = resolve, download, hash, unpack into the local registry. Medians of 5.

| step | median |
|---|---|
| publish (upload + server checks + store) | {p['publish_ms']} ms |
| pull (resolve + download + verify + unpack) | {p['pull_ms']} ms |
| **publish + pull** | **{p['publish_plus_pull_ms']} ms** (under 1 s: {ok(p['publish_plus_pull_ms'] < 1000)}) |
| packing the folder first (reproducible tar.gz, gzip level 9) | {p['pack_ms']} ms |
| pack + publish + pull (what `envhub publish FOLDER` then `envhub pull` costs) | {p['pack_publish_pull_ms']} ms |

## 3. 100 concurrent pull clients (target: no errors)

{cc['clients']} threads (each on its own keep-alive connection from one pool) start together (a barrier) and each pull
the same artifact {cc['pulls'] // cc['clients']} times, checking its digest; every pull is written
to the audit log (SQLite, WAL).

| server | clients | pulls | errors | wall | pulls/s | median latency | p95 | max | pulls in the audit log |
|---|---|---|---|---|---|---|---|---|---|
| `hub serve` (1 worker) | {cc['clients']} | {cc['pulls']} | **{cc['errors']}** | {cc['wall_s']} s | {cc['pulls_per_s']} | {cc['median_ms']} ms | {cc['p95_ms']} ms | {cc['max_ms']} ms | {cc['audit_events']} |
| `hub serve --workers 2` | {c2w['clients']} | {c2w['pulls']} | **{c2w['errors']}** | {c2w['wall_s']} s | {c2w['pulls_per_s']} | {c2w['median_ms']} ms | {c2w['p95_ms']} ms | {c2w['max_ms']} ms | {c2w['audit_events']} |

Latency under this load is queueing: the server and the 100 client threads share the machine's
CPUs, so a second worker helps only as far as a core is free. Past one machine, run the workers on
PostgreSQL (`--database-url postgresql+psycopg://...`); the SQLite default is meant for one machine.
"""
    path.write_text(text)


if __name__ == "__main__":
    main()
