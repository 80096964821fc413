"""The cluster's bucket, and the inputs its shipped sweeps read from it (compose's `create-bucket` service).

    python docker/buckets.py create              # the bucket IMM_BUCKET (idempotent); says which inputs are missing
    python docker/buckets.py put LOCAL s3://B/K  # upload a file, or a folder under that prefix

S3 settings come from the environment (AWS_ENDPOINT_URL_S3, the keys), as for every node. Nothing but boto3.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
URI = re.compile(r"s3://([a-z0-9.-]+)/([^\s,\]'\"]+)")


def inputs(bucket: str, sweeps: Path = SWEEPS) -> list[str]:
    """The s3:// inputs the shipped sweeps name in `bucket`: (data sets, weights), in order, each once."""
    found = (f"s3://{b}/{k}" for f in sorted(sweeps.glob("*.yaml")) for b, k in URI.findall(f.read_text()) if b == bucket)
    return list(dict.fromkeys(found))


def exists(s3, uri: str) -> bool:
    """An object at `uri`, or any object under it (a folder)."""
    bucket, key = uri[len("s3://"):].split("/", 1)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/"), MaxKeys=1)
    return listed.get("KeyCount", 0) > 0


def create(s3, bucket: str, sweeps: Path = SWEEPS) -> list[str]:
    """Create `bucket` unless it exists; the shipped sweeps' inputs not yet in it."""
    try:
        s3.create_bucket(Bucket=bucket)
        print(f"created s3://{bucket}")
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        print(f"s3://{bucket} exists")
    missing = [u for u in inputs(bucket, sweeps) if not exists(s3, u)]
    for uri in missing:
        print(f"missing {uri}: upload it with `python docker/buckets.py put LOCAL {uri}` (docker/README.md)")
    return missing


def put(s3, local: Path, uri: str) -> int:
    """Upload a file to `uri`, or a folder's files under it; the number of files."""
    bucket, key = uri[len("s3://"):].split("/", 1)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"put: nothing to upload at {local}")
    for f in files:
        target = key if f == local else f"{key.rstrip('/')}/{f.relative_to(local).as_posix()}"
        s3.upload_file(str(f), bucket, target)
        print(f"{f} -> s3://{bucket}/{target}")
    return len(files)


def main(argv: list[str]) -> int:
    import boto3

    s3 = boto3.client("s3")
    if argv[:1] == ["create"] and len(argv) == 1:
        create(s3, os.environ.get("IMM_BUCKET", "imm"))
        return 0
    if argv[:1] == ["put"] and len(argv) == 3 and argv[2].startswith("s3://"):
        put(s3, Path(argv[1]), argv[2])
        return 0
    print("usage: buckets.py create | put LOCAL s3://BUCKET/KEY", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
