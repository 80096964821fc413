"""What a run records about where it ran (`orchestrator.track.provenance`): the versions of the stack as tags, the
commit of the code (carried into a submitted job, whose working dir has no .git), and MLflow's system metrics
from a node, GPUs included. There is no GPU here: NVML is replaced by a stand-in with two GPUs, which is the only
thing mocked; the monitor, MLflow's store and the metric names are real."""

from __future__ import annotations

import subprocess
import sys
import time
import types
from importlib.metadata import version

import pytest
import torch

from orchestrator.track import provenance, tracking

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_versions_are_those_of_the_running_stack():
    import mlflow
    import optuna
    import ray

    tags = provenance.versions()
    assert tags["imm.version.torch"] == torch.__version__ and tags["imm.version.ray"] == ray.__version__
    assert tags["imm.version.mlflow"] == mlflow.__version__ and tags["imm.version.optuna"] == optuna.__version__
    assert tags["imm.version.imm-orch"] == version("imm-orch")
    assert tags["imm.version.cuda"] == (torch.version.cuda or "none")  # the CPU build here: none
    assert tags["imm.version.python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(tags) == {f"imm.version.{k}" for k in
                         ("torch", "cuda", "cudnn", "nccl", "ray", "mlflow", "optuna", "python", "imm-orch")}


def test_the_commit_is_the_checkouts_or_the_one_a_job_was_given(monkeypatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    monkeypatch.delenv(provenance.GIT_COMMIT_ENV, raising=False)
    sha, dirty = provenance.git_commit()
    assert sha == head
    carried = provenance.carried_commit()[provenance.GIT_COMMIT_ENV]
    assert carried == head + ("+dirty" if dirty else "")
    monkeypatch.setenv(provenance.GIT_COMMIT_ENV, "0123abc+dirty")  # in the job: no .git, the submitter's commit
    assert provenance.git_commit() == ("0123abc", True)
    monkeypatch.setenv(provenance.GIT_COMMIT_ENV, "0123abc")
    assert provenance.git_commit() == ("0123abc", False)


def test_a_submitted_job_carries_the_commit(monkeypatch):
    from orchestrator.cli import parse_args
    from orchestrator.infra.submit import plan_submission

    monkeypatch.delenv(provenance.GIT_COMMIT_ENV, raising=False)
    args = parse_args(["submit", "toy2d", "--cluster", "http://head:8265", "--tracking-uri", "http://mlflow:5000",
                       "storage.ray_storage=s3://b/ray"])
    job = plan_submission(args)
    assert job.runtime_env["env_vars"][provenance.GIT_COMMIT_ENV] == provenance.carried_commit()[provenance.GIT_COMMIT_ENV]


class FakeNVML(types.ModuleType):
    """NVML with two GPUs: 25% and 50% of 80 GB used, 30% and 90% busy, 350 W of 700 W."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        super().__init__("pynvml")
        self.nvmlInit = lambda: None
        self.nvmlDeviceGetCount = lambda: 2
        self.nvmlDeviceGetHandleByIndex = lambda i: i
        total = 80e9
        self.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=total * (h + 1) / 4, total=total)
        self.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=[30, 90][h])
        self.nvmlDeviceGetPowerUsage = lambda h: 350_000
        self.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000


def test_system_metrics_of_a_node_reach_its_run_with_the_gpus(tmp_path, monkeypatch):
    import mlflow.system_metrics.metrics.gpu_monitor as gpu_monitor

    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())
    monkeypatch.setattr(gpu_monitor, "pynvml", sys.modules["pynvml"], raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlc = tracking.client(uri)
    run_id = mlc.create_run(mlc.create_experiment("sys")).info.run_id
    assert provenance.system_metrics(uri, run_id, "10.0.0.5/ab12cd34", every_s=0) is None  # off
    monitor = provenance.system_metrics(uri, run_id, "10.0.0.5/ab12cd34", every_s=0.2)
    time.sleep(1.5)
    monitor.finish()
    metrics = mlc.get_run(run_id).data.metrics
    node = "system/10.0.0.5-ab12cd34/"
    for key in ("cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage"):
        assert node + key in metrics, sorted(metrics)
    gpu = {k[len(node):]: v for k, v in metrics.items() if k.startswith(node + "gpu_")}
    assert gpu["gpu_0_memory_usage_percentage"] == 25.0 and gpu["gpu_1_memory_usage_percentage"] == 50.0
    assert gpu["gpu_0_utilization_percentage"] == 30.0 and gpu["gpu_1_utilization_percentage"] == 90.0
    assert metrics[node + "gpu_1_memory_usage_megabytes"] == pytest.approx(40_000.0)
    steps = [m.step for m in mlc.get_metric_history(run_id, node + "cpu_utilization_percentage")]
    assert len(steps) >= 3 and steps == list(range(len(steps)))  # a sample every 0.2 s, in order

    # a restarted worker continues the steps (resume_logging), on the node it now runs on
    again = provenance.system_metrics(uri, run_id, "10.0.0.6/ef56ab78", every_s=0.2)
    time.sleep(0.7)
    again.finish()
    later = [m.step for m in mlc.get_metric_history(run_id, "system/10.0.0.6-ef56ab78/cpu_utilization_percentage")]
    assert later and min(later) > max(steps)
