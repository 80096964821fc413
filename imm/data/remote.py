"""S3, the one place the project talks to it: inputs (data sets, Inception weights), caches (trained
extractors, FID reference statistics) and, through `s3_filesystem`, Ray Train's checkpoints.

- `local_copy(uri)`: an `s3://bucket/key` object or prefix as a local path (cached, written atomically);
  a local path comes back as it is.
- `cached(cache, name)` / `publish(path, cache, name)`: a cache that is a local folder or an s3:// prefix.
- `s3_client()` (boto3) and `s3_filesystem()` (pyarrow, what Ray Train wants) share one configuration:
  the endpoint from AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or MLFLOW_S3_ENDPOINT_URL (MinIO, moto; unset for AWS),
  retries from AWS_RETRY_MODE (standard or adaptive; default standard) and AWS_MAX_ATTEMPTS (default 8).

Credentials come only from the environment or an instance role (boto3's and the AWS SDK's own chains); no
config key holds one, so none can reach a run's params, tags or artifacts. Nothing is ever fetched from
anywhere but the URIs the user gives.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from pyarrow import fs

S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
RETRY_MODES = ("standard", "adaptive")
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_CACHE = Path(os.environ.get("IMM_CACHE", Path.home() / ".cache" / "imm"))


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (the first of S3_ENDPOINT_VARS that is set), or None for AWS."""
    for var in S3_ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def retry_settings() -> tuple[str, int]:
    """(mode, max attempts) from AWS_RETRY_MODE and AWS_MAX_ATTEMPTS, checked, with the defaults above."""
    mode = os.environ.get("AWS_RETRY_MODE") or "standard"
    if mode not in RETRY_MODES:
        raise ValueError(f"AWS_RETRY_MODE: {mode!r} is not one of {list(RETRY_MODES)}")
    raw = os.environ.get("AWS_MAX_ATTEMPTS") or str(DEFAULT_MAX_ATTEMPTS)
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"AWS_MAX_ATTEMPTS: {raw!r} must be an integer >= 1")
    return mode, int(raw)


def s3_client():
    """A boto3 S3 client with bounded retries (transient errors, 5xx and throttling are retried with backoff)."""
    import boto3
    from botocore.config import Config

    mode, attempts = retry_settings()
    config = Config(retries={"mode": mode, "total_max_attempts": attempts}, connect_timeout=10, read_timeout=60)
    return boto3.client("s3", endpoint_url=s3_endpoint(), region_name=region(), config=config)


PROBE_TIMEOUT_S = 4  # per connect and per read: a probe answers within 10 s


def probe(uri: str, field: str, *, exists: bool = True) -> None:
    """A cheap check that `uri` (s3://bucket[/key]) can be used, before any cluster starts: the endpoint answers,
    the credentials are accepted, the bucket is there and, with `exists`, an object or prefix at the key. One
    attempt with short timeouts; raises ValueError naming `field`, the URI and the endpoint."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split(uri)
    endpoint = s3_endpoint() or "AWS S3"
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=PROBE_TIMEOUT_S, read_timeout=PROBE_TIMEOUT_S)
    client = boto3.client("s3", endpoint_url=s3_endpoint(), region_name=region(), config=config)
    try:
        if key and exists:
            found = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount", 0)
            if not found:
                raise ValueError(f"{field}: nothing at {uri} (bucket {bucket!r} at {endpoint} has no such key or prefix)")
        else:
            client.head_bucket(Bucket=bucket)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        why = {"404": "no such bucket", "NoSuchBucket": "no such bucket", "403": "access denied: check the AWS "
               "credentials of this machine", "AccessDenied": "access denied: check the AWS credentials of this "
               "machine"}.get(code, str(e).splitlines()[0])
        raise ValueError(f"{field}: {uri} cannot be used ({why}; endpoint {endpoint})") from None
    except BotoCoreError as e:  # no answer, no credentials, a malformed endpoint
        raise ValueError(f"{field}: {uri} cannot be reached ({e}); set AWS_ENDPOINT_URL_S3 to the S3 endpoint "
                         "(unset for AWS) and the AWS credentials") from None


class RetryingS3FileSystem(fs.S3FileSystem):
    """pyarrow's S3FileSystem with the AWS SDK's standard retries bounded by `max_attempts`, kept when pickled
    (pyarrow's own pickling drops the retry strategy, and Ray ships the filesystem to every worker)."""

    def __init__(self, max_attempts: int, **options):
        super().__init__(retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=max_attempts), **options)
        self.max_attempts, self.options = max_attempts, options

    def __reduce__(self):
        return RetryingS3FileSystem._rebuild, (self.max_attempts, self.options)

    @staticmethod
    def _rebuild(max_attempts: int, options: dict) -> RetryingS3FileSystem:
        return RetryingS3FileSystem(max_attempts, **options)


def s3_filesystem() -> RetryingS3FileSystem:
    """A pyarrow S3 filesystem (AWS or, with an endpoint such as http://minio:9000, any S3-compatible store)
    with retries bounded by AWS_MAX_ATTEMPTS: what Ray Train's checkpoint storage uses."""
    from urllib.parse import urlparse

    _, attempts = retry_settings()
    options = {"region": region()}
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    return RetryingS3FileSystem(attempts, **options)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """A local file's hex digest (hashlib's `algorithm`), read a MiB at a time. MD5 is only ever a checksum here."""
    h = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def split(uri: str) -> tuple[str, str]:
    """s3://bucket/key/... -> (bucket, key/...)."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket; use s3://bucket/key")
    return bucket, key.strip("/")


def _not_found(e) -> bool:
    return e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def exists(uri: str) -> bool:
    """Whether a local path or an s3:// object exists."""
    if not is_remote(uri):
        return Path(uri).expanduser().exists()
    from botocore.exceptions import ClientError

    bucket, key = split(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as e:
        if _not_found(e):
            return False
        raise


def local_copy(uri: str, cache_dir: str | Path | None = None) -> Path:
    """A local path holding `uri`: the path itself, or a cached copy of an s3:// object or prefix."""
    if not is_remote(uri):
        return Path(uri).expanduser()
    from botocore.exceptions import ClientError

    bucket, key = split(uri)
    cache = Path(cache_dir or DEFAULT_CACHE) / "s3" / hashlib.sha1(uri.encode()).hexdigest()[:16] / Path(key).name
    if cache.exists():
        return cache
    client = s3_client()
    try:
        client.head_object(Bucket=bucket, Key=key)
        keys = [key]
    except ClientError as e:
        if not _not_found(e):
            raise
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/")
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        if not keys:
            raise FileNotFoundError(f"{uri} does not exist (or these credentials cannot see it)") from None
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache.parent)) / cache.name
    if keys == [key]:
        client.download_file(bucket, key, str(tmp))
    else:
        for k in keys:
            dest = tmp / k[len(key) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, k, str(dest))
    os.replace(tmp, cache)  # atomic: a crash never leaves a half copy where the next run would trust it
    shutil.rmtree(tmp.parent, ignore_errors=True)
    return cache


def cached(cache: str | Path, name: str) -> Path | None:
    """The local path of `name` in a cache (a folder or an s3:// prefix), or None if it is not there yet."""
    cache = str(cache)
    if not is_remote(cache):
        p = Path(cache).expanduser() / name
        return p if p.is_file() else None
    uri = f"{cache.rstrip('/')}/{name}"
    return local_copy(uri) if exists(uri) else None


def publish(path: Path, cache: str | Path, name: str) -> Path:
    """Put the finished file `path` into the cache as `name` (atomically for a folder; one PUT for S3)."""
    cache = str(cache)
    if is_remote(cache):
        bucket, prefix = split(f"{cache.rstrip('/')}/{name}")
        s3_client().upload_file(str(path), bucket, prefix)
        return path
    dest = Path(cache).expanduser() / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=dest.parent)
    os.close(fd)
    shutil.copyfile(path, tmp)
    os.replace(tmp, dest)
    return dest
