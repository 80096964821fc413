"""Where a run keeps its things: the embedded default folder, and Ray Train's `storage_path`.

The embedded default keeps everything under `storage.root` (./imm-runs): `mlflow.db`, `artifacts/` and
`ray/`. `storage.ray_storage` may point Ray's checkpoints elsewhere: a folder or `s3://bucket/prefix`.
For an S3 endpoint other than AWS (MinIO, moto), Ray needs an explicit pyarrow filesystem: `imm.data.remote`
builds it from AWS_ENDPOINT_URL_S3 or MLFLOW_S3_ENDPOINT_URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from imm.config import ConfigError
from imm.data.remote import s3_filesystem


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

    def delete_run(self, name: str) -> bool:
        """Delete the run's folder (its checkpoints and Ray's run state); False if there was none."""
        import pyarrow.fs

        fs = self.filesystem() or pyarrow.fs.LocalFileSystem()
        path = f"{self.path.rstrip('/')}/{name}"
        if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            return False
        fs.delete_dir(path)
        return True


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
