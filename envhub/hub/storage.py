"""Where the hub keeps artifacts: a small interface, content-addressed keys, and two implementations,
local disk (one machine) and an S3 bucket (any number of replicas).

Every write is atomic: a key holds all of its bytes or does not exist (a rename on disk; a PUT or a
completed multipart upload in S3). Blobs are written before the database row that points at them,
so a crash can leave a blob nobody references, never a row without its blob; :meth:`Storage.keys`
and :meth:`Storage.remove_incomplete` let the hub sweep those at start-up.
"""

from __future__ import annotations

import os
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from envhub.identity.artifact import write_atomic

ARTIFACTS = "artifacts/"
CHUNK = 1 << 20  # what a download reads and sends at a time


def artifact_key(digest: str) -> str:
    return f"{ARTIFACTS}{digest.removeprefix('sha256:')}.tar.gz"


class Storage(ABC):
    """Blob storage; every write is atomic."""

    #: Where the blobs are, for messages and logs.
    description: str = "storage"

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key`` without reading it whole into memory."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The blob's size in bytes; None when there is no such key."""

    @abstractmethod
    def iter_bytes(self, key: str, *, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The blob's bytes, a chunk at a time (a download never holds it whole)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def keys(self, prefix: str = "") -> Iterator[tuple[str, datetime]]:
        """Every key under ``prefix`` with the time it was written (UTC)."""

    @abstractmethod
    def remove_incomplete(self, older_than: datetime) -> int:
        """Throw away writes that never completed (temporary files, multipart uploads) started
        before ``older_than``; returns how many."""

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def get(self, key: str) -> bytes:
        return b"".join(self.iter_bytes(key))


class LocalDiskStorage(Storage):
    """Blobs as files under ``root``, written through a temporary file and a rename."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.description = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key {key!r} escapes the storage root")
        return path

    def put(self, key: str, data: bytes) -> None:
        write_atomic(self._path(key), data)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            try:  # a hard link costs no copy when the file is on the same file system
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def iter_bytes(self, key: str, *, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            yield from iter(lambda: f.read(chunk_size), b"")

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _files(self, prefix: str) -> Iterator[Path]:
        base = self._path(prefix) if prefix.strip("/") else self.root.resolve()
        return (p for p in base.rglob("*") if p.is_file()) if base.is_dir() else iter(())

    def keys(self, prefix: str = "") -> Iterator[tuple[str, datetime]]:
        root = self.root.resolve()
        for path in self._files(prefix):
            if not path.name.startswith("."):  # temporary files of writes in progress
                yield path.relative_to(root).as_posix(), datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)

    def remove_incomplete(self, older_than: datetime) -> int:
        removed = 0
        for path in self._files(""):
            if path.name.startswith(".") and path.name.endswith(".tmp") and path.stat().st_mtime < older_than.timestamp():
                path.unlink(missing_ok=True)
                removed += 1
        return removed


class S3Storage(Storage):
    """Blobs as objects in an S3 bucket (AWS, or any S3-compatible server: SeaweedFS, MinIO, Ceph).

    Credentials are the ones given, else boto3's own chain (``AWS_ACCESS_KEY_ID``, ``~/.aws``, an
    instance role). Files go up in ``part_size`` parts, ``max_concurrency`` at a time, so one upload
    holds at most their product in memory; downloads are read ``CHUNK`` at a time from the response.
    """

    def __init__(
        self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
        access_key_id: str | None = None, secret_access_key: str | None = None,
        part_size: int = 8 << 20, max_concurrency: int = 2,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        where = endpoint_url or "AWS"
        self.description = f"s3://{bucket}/{self.prefix} at {where}"
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=64,
            # S3-compatible servers on an address of their own serve buckets by path, not by host name.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region or "us-east-1",
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, config=config,
        )
        self.transfer = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
                                       max_concurrency=max_concurrency, use_threads=max_concurrency > 1)

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"storage key {key!r} escapes the storage prefix")
        return self.prefix + key

    def check(self) -> None:
        """Fail now, with the next step named, when the bucket cannot be reached."""
        from botocore.exceptions import BotoCoreError, ClientError

        from envhub.errors import RegistryError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise RegistryError(
                f"cannot use the artifact store {self.description}: {exc}",
                hint="check --s3-endpoint-url, that the bucket exists (`aws s3 mb s3://BUCKET`) and the credentials "
                     "(ENVHUB_HUB_S3_ACCESS_KEY_ID and ENVHUB_HUB_S3_SECRET_ACCESS_KEY, or AWS_* variables)",
            ) from exc

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer)

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def iter_bytes(self, key: str, *, chunk_size: int = CHUNK) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def keys(self, prefix: str = "") -> Iterator[tuple[str, datetime]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"].removeprefix(self.prefix), item["LastModified"].astimezone(timezone.utc)

    def remove_incomplete(self, older_than: datetime) -> int:
        removed = 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"].astimezone(timezone.utc) < older_than:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    removed += 1
        return removed
