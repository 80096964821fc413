"""What a run was made with and what its nodes did: the code's commit, the versions of the stack, and MLflow's
system metrics (CPU, memory, disk, network, and GPU utilisation and memory where NVML sees GPUs) from every
node the run's workers ran on.

A Ray job's working dir has no `.git`: `imm-orch submit` reads the commit of the submitting checkout and hands
it to the job in GIT_COMMIT_ENV, which `git_commit` prefers.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

GIT_COMMIT_ENV = "IMM_GIT_COMMIT"  # "SHA" or "SHA+dirty": the submitting checkout's commit, in a submitted job
VERSION_TAG = "imm.version."  # imm.version.torch, imm.version.cuda, ...
SYSTEM_PREFIX = "system/"  # MLflow's: system/<node>/cpu_utilization_percentage, .../gpu_0_memory_usage_megabytes


def git_commit() -> tuple[str, bool] | None:
    """(commit, dirty) of the code that runs: the submitting checkout's (GIT_COMMIT_ENV), else the git checkout
    this module lives in, else None."""
    carried = os.environ.get(GIT_COMMIT_ENV)
    if carried:
        sha, _, state = carried.partition("+")
        return sha, state == "dirty"
    return checkout_commit()


@functools.cache
def checkout_commit() -> tuple[str, bool] | None:
    """(commit, dirty) of the git checkout this module lives in, read once per process (the code it runs is what
    it imported): `git status` takes a tenth of a second, and a sweep opens a run per trial."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return None
        status = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def carried_commit() -> dict[str, str]:
    """The env entry that carries this checkout's commit into a Ray job (none outside git)."""
    commit = git_commit()
    return {GIT_COMMIT_ENV: commit[0] + ("+dirty" if commit[1] else "")} if commit else {}


def versions() -> dict[str, str]:
    """The stack this process runs on, as run tags: torch, CUDA, cuDNN and NCCL (or `none`), Ray, MLflow, Optuna,
    Python and this project."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "none"

    cuda = torch.cuda.is_available()
    nccl = torch.cuda.nccl.version() if cuda and torch.distributed.is_nccl_available() else None
    found = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "cudnn": str(torch.backends.cudnn.version()) if cuda and torch.backends.cudnn.is_available() else "none",
        "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl or "none"),
        "ray": of("ray"),
        "mlflow": of("mlflow"),
        "optuna": of("optuna"),
        "python": platform.python_version(),
        "imm-orch": of("imm-orch"),
    }
    return {VERSION_TAG + k: v for k, v in found.items()}


def tag_versions(mlflow_client, run_id: str) -> None:
    from mlflow.entities import RunTag

    mlflow_client.log_batch(run_id, tags=[RunTag(k, v) for k, v in versions().items()])


def system_metrics(tracking_uri: str, run_id: str, node: str, every_s: float):
    """MLflow's system metrics monitor of this node for the run, started (None when `every_s` is 0): one sample
    every `every_s` seconds under `system/<node>/`, continuing the run's steps after a restart; it stops by itself
    when the run ends, or with `.finish()`. GPU metrics need NVML (the `gpu` extra) and a GPU."""
    if every_s <= 0:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=every_s, samples_before_logging=1, resume_logging=True,
                                   node_id=node.replace("/", "-"), tracking_uri=tracking_uri)
    monitor.start()
    return monitor


DATA_DIGEST_TAG = "imm.data.digest"
_digests: dict[tuple, object] = {}  # per process: a sweep's trials share their data set


def dataset_digest(data_cfg):
    """The training set's `imm.data.digest.DataDigest`, computed once per process: a sweep's trials share it."""
    from imm.data.digest import data_digest

    key = (data_cfg.name, data_cfg.n_train, data_cfg.n_heldout, data_cfg.seed)
    if key not in _digests:
        _digests[key] = data_digest(data_cfg)
    return _digests[key]


def log_dataset(mlflow_client, run_id: str, data_cfg, tagged: bool = False) -> str:
    """The run's training set as its MLflow dataset input (name, content digest, source: what the UI's Datasets
    column shows) and as the `imm.data.digest` tag a registered version copies (unless the run was created
    `tagged` with it already); the digest."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    d = dataset_digest(data_cfg)
    dataset = Dataset(name=d.name, digest=d.digest[:36], source_type="imm", source=d.source,
                      profile=f'{{"sha256": "{d.digest}", "basis": "{d.basis}"}}')
    inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
    try:
        mlflow_client.log_inputs(run_id, datasets=inputs)
    except MlflowException:
        # The store adds a data set new to the experiment with a check, then an insert: a sweep's trials opening
        # their runs at once race there, and the loser's insert breaks the unique key. Again, it finds the set.
        mlflow_client.log_inputs(run_id, datasets=inputs)
    if not tagged:
        mlflow_client.set_tag(run_id, DATA_DIGEST_TAG, d.digest)
    return d.digest


PARENT_MODEL_TAG, PARENT_RUN_TAG = "imm.parent_model", "imm.parent_run_id"  # train.init_from, and the run behind it


def tag_parent(mlflow_client, run_id: str, init_from: str | None, parent_run: str | None) -> None:
    """Name the model a run started from (train.init_from) and the training run behind it, where known."""
    if not init_from:
        return
    tags = {PARENT_MODEL_TAG: init_from, **({PARENT_RUN_TAG: parent_run} if parent_run else {})}
    for k, v in tags.items():
        mlflow_client.set_tag(run_id, k, v)


TEACHER_MODEL_TAG, TEACHER_RUN_TAG = "imm.teacher", "imm.teacher_run_id"  # train.teacher, and the run behind it


def tag_teacher(mlflow_client, run_id: str, teacher: str, teacher_run: str | None) -> None:
    """Name the model a run distilled (train.teacher) and the training run behind it, where known."""
    mlflow_client.set_tag(run_id, TEACHER_MODEL_TAG, teacher)
    if teacher_run:
        mlflow_client.set_tag(run_id, TEACHER_RUN_TAG, teacher_run)
