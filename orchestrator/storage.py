"""Where a run keeps its things: the embedded default folder, and Ray Train's `storage_path`.

The embedded default keeps everything under `storage.root` (./imm-runs): `mlflow.db`, `artifacts/` and
`ray/`. `storage.ray_storage` may point Ray's checkpoints elsewhere: a folder or `s3://bucket/prefix`.
For an S3 endpoint other than AWS (MinIO, moto), Ray needs an explicit pyarrow filesystem, built here
from AWS_ENDPOINT_URL_S3 or MLFLOW_S3_ENDPOINT_URL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from imm.config import ConfigError

S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


@dataclass(frozen=True)
class RayStorage:
    """Ray Train's storage: `path` as Ray wants it (no scheme when `is_s3`, since a filesystem goes with it)."""

    uri: str  # what the user configured, resolved: an absolute folder or s3://bucket/prefix
    path: str
    is_s3: bool

    def filesystem(self):
        """The pyarrow filesystem for an s3:// storage (None for a local folder: Ray picks it)."""
        return s3_filesystem() if self.is_s3 else None

    def run_uri(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}"

    def checkpoint_uri(self, checkpoint) -> str:
        """A Ray checkpoint's location as users write it (Ray keeps S3 paths without the scheme)."""
        return f"s3://{checkpoint.path}" if self.is_s3 else checkpoint.path


def root(cfg) -> Path:
    """The embedded default's folder, absolute (workers and the driver may not share a working directory)."""
    return Path(cfg.storage.root).expanduser().resolve()


def ray_storage(cfg) -> RayStorage:
    """`storage.ray_storage`, or `<storage.root>/ray`; fails on a scheme Ray cannot use here."""
    raw = cfg.storage.ray_storage
    if not raw:
        p = str(root(cfg) / "ray")
        return RayStorage(uri=p, path=p, is_s3=False)
    parsed = urlparse(raw)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"storage.ray_storage: {raw!r} names no bucket; use s3://bucket/prefix")
        path = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        return RayStorage(uri=f"s3://{path}", path=path, is_s3=True)
    if parsed.scheme in ("", "file"):
        p = str(Path(parsed.path if parsed.scheme else raw).expanduser().resolve())
        return RayStorage(uri=p, path=p, is_s3=False)
    raise ConfigError(f"storage.ray_storage: scheme {parsed.scheme!r} is not supported; use a folder or s3://bucket/prefix")


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (first of AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL)."""
    for var in S3_ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def s3_filesystem(endpoint: str | None = None):
    """A pyarrow S3FileSystem for AWS or, with an endpoint such as http://minio:9000, any S3-compatible store.

    Credentials come from the usual AWS variables; the region defaults to us-east-1 (MinIO ignores it).
    """
    from pyarrow import fs

    endpoint = endpoint or s3_endpoint()
    kwargs = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    return fs.S3FileSystem(**kwargs)
