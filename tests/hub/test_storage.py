"""The hub's storage within bounds (issue 13, finding 12): uploads go to disk as they arrive, so six
concurrent large ones barely move the hub's memory; at most N uploads are received at once; the
loser of a publish race leaves no blob behind; what a crash leaves (scratch, half-written and
unreferenced blobs) is removed at the next start-up."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from hub_services import PeakMemory, quick_artifact

from envhub.errors import VersionConflictError
from envhub.hub.storage import artifact_key
from envhub.identity.artifact import pack_bytes, sha256_digest


def adduser(data: Path, name: str = "alice") -> str:
    made = subprocess.run(
        [sys.executable, "-c", "from envhub.cli import main; main()", "hub", "adduser", name, "--data", str(data)],
        capture_output=True, text=True, timeout=120,
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def put(url: str, token: str, ref: str, body: bytes, **kwargs) -> httpx.Response:
    namespace, name, version = ref.replace("@", "/").split("/")
    return httpx.put(f"{url}/api/v1/envs/{namespace}/{name}/{version}", content=body,
                     headers={"Authorization": f"Bearer {token}"}, timeout=120, **kwargs)


def test_six_concurrent_large_uploads_stay_within_a_memory_bound(tmp_path, isolated_home, env_folder, hub_process):
    # The finding: six concurrent 95 MB uploads peaked at 1 GiB, each held whole (twice) in memory.
    # Here six of 16 MiB each: 96 MiB in flight, which the hub must receive in a few MiB.
    data_dir = tmp_path / "hub-data"
    token = adduser(data_dir)
    hub = hub_process(data_dir, "--max-upload-mb", "20")
    hub.start()
    bodies = [quick_artifact(env_folder(namespace="alice", name=f"big{i}"), 16 << 20) for i in range(6)]
    assert put(hub.url, token, "alice/warmup@1.0.0", pack_bytes(env_folder(namespace="alice", name="warmup"))).status_code == 201

    memory = PeakMemory(hub.proc.pid)
    barrier = threading.Barrier(len(bodies))
    statuses: list[int] = [0] * len(bodies)

    def upload(i: int) -> None:
        barrier.wait()
        statuses[i] = put(hub.url, token, f"alice/big{i}@1.0.0", bodies[i]).status_code

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(bodies))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert statuses == [201] * len(bodies), statuses
    grew = memory.growth
    assert grew < 32 << 20, f"the hub's peak memory grew by {grew / 2**20:.0f} MiB receiving {len(bodies)} x 16 MiB"
    assert time.monotonic() - t0 < 90

    # Every upload is stored whole, and no scratch file outlives its request.
    headers = {"Authorization": f"Bearer {token}"}
    got = httpx.get(f"{hub.url}/api/v1/envs/alice/big3/1.0.0/artifact", headers=headers, timeout=60)
    assert got.status_code == 200 and got.content == bodies[3]
    assert [p.name for p in (data_dir / "scratch").rglob("*") if p.is_file() and p.name != ".lock"] == []


def test_uploads_past_the_cap_wait_then_get_503_with_retry_after(tmp_path, isolated_home, env_folder, hub_factory):
    hub = hub_factory(tmp_path / "hub-data", max_concurrent_uploads=1, upload_wait_s=0.5)
    token = hub.tokens["alice"]
    slow = pack_bytes(env_folder(namespace="alice", name="slow"))
    quick = pack_bytes(env_folder(namespace="alice", name="quick"))
    port = int(hub.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:  # holds the one slot: half a body, then nothing
        sock.sendall(
            f"PUT /api/v1/envs/alice/slow/1.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(slow)}\r\n\r\n".encode() + slow[: len(slow) // 2]
        )
        time.sleep(0.3)
        t0 = time.monotonic()
        busy = put(hub.url, token, "alice/quick@1.0.0", quick)
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "uploads_busy" and int(busy.headers["Retry-After"]) >= 1
        assert 0.4 < time.monotonic() - t0 < 5  # it waited for a slot, then gave up
        sock.sendall(slow[len(slow) // 2:])
        assert sock.recv(65536).startswith(b"HTTP/1.1 201")
    assert put(hub.url, token, "alice/quick@1.0.0", quick).status_code == 201  # a slot is free again


def test_losing_concurrent_publishes_leave_no_blob(hub, env_folder):
    blobs = [pack_bytes(env_folder(namespace="alice", name="race", extra=f"variant {i}")) for i in range(6)]
    results = hub.race("alice", blobs, name="race")
    winners = [r for r in results if isinstance(r, tuple)]
    assert len(winners) == 1 and sum(isinstance(r, VersionConflictError) for r in results) == len(blobs) - 1
    stored = [key for key, _ in hub.hub.storage.keys("artifacts/")]
    assert stored == [artifact_key(winners[0][0].digest)]


def test_start_up_removes_what_a_crash_left(tmp_path, isolated_home, env_folder, hub_process):
    data_dir = tmp_path / "hub-data"
    token = adduser(data_dir)
    hub = hub_process(data_dir, "--orphan-grace", "0")
    hub.start()
    kept = pack_bytes(env_folder(namespace="alice", name="kept"))
    assert put(hub.url, token, "alice/kept@1.0.0", kept).status_code == 201

    # Killed in the middle of an upload: the part received is in the process's scratch folder.
    body = quick_artifact(env_folder(namespace="alice", name="half"), 4 << 20)
    scratch = lambda: [p for p in (data_dir / "scratch").rglob("upload-*") if p.stat().st_size]  # noqa: E731
    with socket.create_connection(("127.0.0.1", hub.port)) as sock:
        sock.sendall(
            f"PUT /api/v1/envs/alice/half/1.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2]
        )
        deadline = time.monotonic() + 10
        while not scratch() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scratch(), "the upload should be arriving in a scratch file"
        hub.kill()
    # And what a crash between storing a blob and recording its version leaves: a blob nobody
    # references, and a blob write cut short (its temporary file).
    storage = data_dir / "storage" / "artifacts"
    orphan = storage / (sha256_digest(body).removeprefix("sha256:") + ".tar.gz")
    orphan.write_bytes(body)
    half_written = storage / f".{orphan.name}.0123abcd.tmp"
    half_written.write_bytes(body[:1000])

    hub.start()
    assert scratch() == [] and not orphan.exists() and not half_written.exists()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{hub.url}/api/v1/envs/alice/half", headers=headers).status_code == 404
    got = httpx.get(f"{hub.url}/api/v1/envs/alice/kept/1.0.0/artifact", headers=headers, timeout=60)
    assert got.content == kept  # a referenced blob stays
    assert put(hub.url, token, "alice/half@1.0.0", body).status_code == 201


def test_start_up_keeps_young_unreferenced_blobs(tmp_path, isolated_home, hub_factory):
    # A blob written a moment ago may be another replica's publish whose row is on its way: kept.
    storage = tmp_path / "hub-data" / "storage" / "artifacts"
    storage.mkdir(parents=True)
    young = storage / ("0" * 64 + ".tar.gz")
    young.write_bytes(b"in flight")
    hub_factory(tmp_path / "hub-data", orphan_grace_s=3600)
    assert young.exists()
