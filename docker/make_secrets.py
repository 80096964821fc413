"""The cluster's secrets as files, one per credential, each in the format of the library that reads it:

    python3 docker/make_secrets.py [--dir docker/secrets] [--bucket imm]

    ray_token           Ray's cluster token (RAY_AUTH_TOKEN_PATH)
    postgres_password   the PostgreSQL user `imm`'s password (the postgres image's POSTGRES_PASSWORD_FILE)
    pgpass              the same, for libpq (PGPASSFILE): MLflow's server, the nodes and your laptop
    s3_identities.json  SeaweedFS's users: `admin` (creates the bucket) and `cluster` (reads and writes it only)
    aws_credentials     the `cluster` user's keys (AWS_SHARED_CREDENTIALS_FILE): MLflow's server, the nodes, the laptop
    aws_admin           the `admin` user's keys: the create-bucket service alone

Nothing is printed and no file is overwritten (delete the folder to start again). Values are random unless given
in the environment (IMM_POSTGRES_PASSWORD, IMM_S3_ACCESS_KEY, IMM_S3_SECRET_KEY, RAY_AUTH_TOKEN): any character
works, since each file is written in its reader's own quoting (libpq's backslash escapes, JSON, INI). The files
are 0600; a container whose user is not the files' owner needs them chowned to its uid (the image runs as 1000).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path


def pgpass_field(value: str) -> str:
    """A field of a libpq password file: `:` and `\\` escaped with a backslash."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def aws_file(access_key: str, secret_key: str) -> str:
    if any(c in access_key + secret_key for c in "\r\n"):
        raise ValueError("S3 keys cannot hold a line break")
    return f"[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"


def contents(bucket: str, env: dict) -> dict[str, str]:
    pg = env.get("IMM_POSTGRES_PASSWORD") or secrets.token_urlsafe(24)
    access, secret = env.get("IMM_S3_ACCESS_KEY") or "imm-cluster", env.get("IMM_S3_SECRET_KEY") or secrets.token_urlsafe(30)
    admin = secrets.token_urlsafe(30)
    identities = {"identities": [
        {"name": "admin", "actions": ["Admin", "Read", "List", "Tagging", "Write"],
         "credentials": [{"accessKey": "imm-admin", "secretKey": admin}]},
        {"name": "cluster", "actions": [f"{a}:{bucket}" for a in ("Read", "List", "Tagging", "Write")],
         "credentials": [{"accessKey": access, "secretKey": secret}]},
    ]}
    return {
        "ray_token": (env.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)) + "\n",
        "postgres_password": pg,
        "pgpass": f"*:*:*:imm:{pgpass_field(pg)}\n",
        "s3_identities.json": json.dumps(identities, indent=1) + "\n",
        "aws_credentials": aws_file(access, secret),
        "aws_admin": aws_file("imm-admin", admin),
    }


def write(folder: Path, bucket: str, env: dict) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = contents(bucket, env)
    there = [name for name in files if (folder / name).exists()]
    if there:
        raise FileExistsError(f"--dir: {folder} already holds {', '.join(there)}; nothing was written (delete the "
                              "folder to make new secrets)")
    written = []
    for name, text in files.items():
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=str(Path(__file__).resolve().parent / "secrets"))
    parser.add_argument("--bucket", default=os.environ.get("IMM_BUCKET", "imm"))
    args = parser.parse_args(argv)
    try:
        written = write(Path(args.dir), args.bucket, dict(os.environ))
    except (FileExistsError, ValueError) as e:
        print(f"make_secrets.py: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {args.dir} (0600): {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
