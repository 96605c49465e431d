"""How a hub runs: :class:`HubSettings`, the artifact store they choose, and their trip to the
worker processes of ``envhub hub serve --workers N``.

One machine: SQLite and artifacts in the data folder (the defaults). Several replicas behind one
address: PostgreSQL (``database_url``) and an S3 bucket (``s3_bucket``), shared by all of them;
each replica keeps only its scratch files (uploads being received) in its own data folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from envhub.hub.service import RESERVED_NAMESPACES
from envhub.hub.storage import LocalDiskStorage, S3Storage, Storage

#: ``envhub hub serve --workers N`` passes the settings to each worker process through this variable.
SETTINGS_ENV = "ENVHUB_HUB_SETTINGS"


@dataclass
class HubSettings:
    """How a hub runs. ``data_dir`` holds the SQLite file, the artifacts and the scratch files
    unless told otherwise."""

    data_dir: Path = Path("hub-data")
    database_url: str | None = None  # default: sqlite:///DATA_DIR/hub.db; postgresql+psycopg://... for PostgreSQL
    storage: Storage | None = None  # default: the S3 bucket below, else LocalDiskStorage(DATA_DIR/storage)
    max_upload_bytes: int = 100 << 20
    max_unpacked_bytes: int = 512 << 20
    public_url: str = ""
    auth_failure_limit: int = 20  # failed authentications per client per window; then 429 with Retry-After
    auth_failure_window_s: float = 60.0
    trusted_proxies: list[str] = field(default_factory=list)  # addresses whose X-Forwarded-For is believed
    reserved_namespaces: list[str] = field(default_factory=lambda: list(RESERVED_NAMESPACES))  # no user or org may take these
    max_concurrent_uploads: int = 8  # uploads received at once per process (each goes to a scratch file, not memory)
    upload_wait_s: float = 30.0  # how long an upload waits for a slot before 503 with Retry-After
    orphan_grace_s: float = 3600.0  # at start-up, unreferenced blobs and unfinished writes older than this are removed
    s3_bucket: str | None = None  # artifacts in this bucket (shared by replicas) instead of DATA_DIR/storage
    s3_prefix: str = ""  # keys under this prefix in the bucket
    s3_endpoint_url: str | None = None  # an S3-compatible server (SeaweedFS, MinIO, ...); none: AWS
    s3_region: str | None = None
    s3_access_key_id: str | None = None  # none: boto3's chain (AWS_ACCESS_KEY_ID, ~/.aws, an instance role)
    s3_secret_access_key: str | None = None
    extra: dict = field(default_factory=dict)

    def make_storage(self) -> Storage:
        """The artifact store these settings name (checked reachable, for S3)."""
        if self.storage is not None:
            return self.storage
        if not self.s3_bucket:
            return LocalDiskStorage(Path(self.data_dir) / "storage")
        store = S3Storage(
            self.s3_bucket, prefix=self.s3_prefix, endpoint_url=self.s3_endpoint_url, region=self.s3_region,
            access_key_id=self.s3_access_key_id, secret_access_key=self.s3_secret_access_key,
        )
        store.check()
        return store


_NOT_SENT = ("storage", "extra")  # objects, not values: a worker builds its own


def settings_to_env(settings: HubSettings) -> str:
    values = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name not in _NOT_SENT}
    values["data_dir"] = str(values["data_dir"])
    return json.dumps(values)


def settings_from_env() -> HubSettings:
    values = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
    values["data_dir"] = Path(values.get("data_dir") or "hub-data")
    return HubSettings(**values)

