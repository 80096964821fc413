"""Reading inputs that may live on S3: `local_copy(uri)` turns an `s3://bucket/key` file or prefix into a
local path (cached, written atomically); a local path comes back as it is.

S3 access goes through pyarrow's S3 filesystem: credentials from the usual AWS variables or an instance
role, and an S3-compatible endpoint (MinIO, moto) from AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or
MLFLOW_S3_ENDPOINT_URL. Nothing is ever fetched from anywhere else.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
DEFAULT_CACHE = Path(os.environ.get("IMM_CACHE", Path.home() / ".cache" / "imm"))


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (the first of S3_ENDPOINT_VARS that is set), or None for AWS."""
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


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def local_copy(uri: str, cache_dir: str | Path | None = None) -> Path:
    """A local path holding `uri`: the path itself, or a cached copy of an s3:// object or prefix."""
    if not is_remote(uri):
        return Path(uri).expanduser()
    from pyarrow import fs

    s3 = s3_filesystem()
    key = uri[len("s3://"):].rstrip("/")
    cache = Path(cache_dir or DEFAULT_CACHE) / "s3" / hashlib.sha1(uri.encode()).hexdigest()[:16] / Path(key).name
    if cache.exists():
        return cache
    info = s3.get_file_info(key)
    if info.type == fs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist (or these credentials cannot see it)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache.parent)) / cache.name
    if info.type == fs.FileType.File:
        fs.copy_files(key, str(tmp), source_filesystem=s3, destination_filesystem=fs.LocalFileSystem())
    else:
        tmp.mkdir()
        fs.copy_files(key, str(tmp), source_filesystem=s3, destination_filesystem=fs.LocalFileSystem())
    os.replace(tmp, cache)  # atomic: a crash never leaves a half copy where the next run would trust it
    shutil.rmtree(tmp.parent, ignore_errors=True)
    return cache
