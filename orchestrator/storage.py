"""Where a run keeps its things: the embedded default folder, and Ray Train's `storage_path`.

The embedded default keeps everything under `storage.root` (./imm-runs): `mlflow.db`, `artifacts/` and
`ray/`. `storage.ray_storage` may point Ray's checkpoints elsewhere: a folder or `s3://bucket/prefix`.
For an S3 endpoint other than AWS (MinIO, moto), Ray needs an explicit pyarrow filesystem: `imm.remote`
builds it from AWS_ENDPOINT_URL_S3 or MLFLOW_S3_ENDPOINT_URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from imm.config import ConfigError
from imm.remote import s3_filesystem


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


def check_s3(cfg) -> None:
    """Every s3:// place the run reads or writes answers, before Ray starts: the endpoint, the credentials, the
    buckets, and the objects it reads (one short probe each, imm.remote.probe)."""
    import os

    from imm.remote import probe
    from orchestrator.tracking import ARTIFACTS_ENV

    data = cfg.data.name.partition(":")[2]
    weights = cfg.eval.inception_weights if cfg.eval.features in ("auto", "inception") else None
    reference = cfg.eval.reference if cfg.eval.features != "none" else None
    places = [("data.name", data, True), ("eval.inception_weights", weights or "", True),
              ("eval.reference", reference or "", True), ("eval.vae", cfg.eval.vae or "", True),
              ("storage.ray_storage", cfg.storage.ray_storage or "", False),
              (f"${ARTIFACTS_ENV}", os.environ.get(ARTIFACTS_ENV, ""), False)]
    for field, uri, exists in places:
        if uri.startswith("s3://"):
            try:
                probe(uri, field, exists=exists)
            except ValueError as e:
                raise ConfigError(str(e)) from None


# --- a cluster: stores every node (and later commands) reach ------------------------------------------------

SERVER_SCHEMES = ("http://", "https://", "databricks")


def check_shared(cfg, *, tracking_uri: str, where: str, in_job: bool, study_url: str | None = None) -> None:
    """Refuse stores that live on one node, before anything is submitted, started or written.

    On a multi-node cluster the nodes share no disk; in a Ray job the working directory (where `./imm-runs`
    resolves) is a temporary folder on the head node that Ray deletes with the job. MLflow must be a server,
    Ray checkpoints on S3 or a folder declared shared (`storage.shared=true`), and the study in an RDB or a
    journal on that shared folder. `where` says why ("in a Ray job", "on a 2-node cluster").
    """
    if not tracking_uri.startswith(SERVER_SCHEMES):
        raise ConfigError(f"--tracking-uri: {tracking_uri} is a local file, and {where} MLflow must be a server every "
                          "node reaches; pass --tracking-uri http://HOST:5000 (or set MLFLOW_TRACKING_URI)")
    raw = cfg.storage.ray_storage
    if not (raw and raw.startswith("s3://")):
        path = raw or f"{cfg.storage.root.rstrip('/')}/ray"
        what = f"{raw!r}" if raw else f"unset, so Ray checkpoints go to <storage.root>/ray = {path}, which"
        problem = _local_problem(path, cfg, where, in_job)
        if problem:
            raise ConfigError(f"storage.ray_storage: {what} {problem}; use storage.ray_storage=s3://bucket/prefix "
                              "(or $IMM_RAY_STORAGE), or a folder every node mounts, declared with storage.shared=true")
    if study_url is None or not study_url.startswith(("journal:", "sqlite:")):
        return
    problem = f"is an SQLite file, and {where} trials on several nodes write to it" if study_url.startswith("sqlite:") \
        else _local_problem(study_url[len("journal:"):], cfg, where, in_job)
    if problem:
        raise ConfigError(f"storage: the study {study_url!r} {problem}; use an RDB URL (`storage: postgresql://...` in "
                          "the sweep file, or $IMM_OPTUNA_STORAGE), or a journal on a folder every node mounts, declared "
                          "with storage.shared=true")


def _local_problem(path: str, cfg, where: str, in_job: bool) -> str | None:
    """Why a local folder cannot hold shared state here, or None."""
    if in_job and not Path(path).expanduser().is_absolute():
        return "is relative: in a Ray job that is inside the job's temporary working dir, which Ray deletes"
    if not cfg.storage.shared:
        return f"is on one node's disk, and {where} the nodes share no disk"
    return None
