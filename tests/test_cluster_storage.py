"""The storage rules of a cluster (`preflight.check_shared`) and what `imm-orch submit` would send, without a cluster:
each store a job or a multi-node cluster cannot share is refused with the setting to change."""

from __future__ import annotations

import argparse
import shlex

import pytest

from imm.config import ConfigError, load_config
from orchestrator.cli import parse_args
from orchestrator.infra import preflight
from orchestrator.infra.submit import EXCLUDES, plan_submission

SERVER = "http://mlflow:5000"


def check(overrides, uri=SERVER, study=None, in_job=True, where="in a Ray job"):
    cfg = load_config("toy2d", overrides)
    preflight.check_shared(cfg, tracking_uri=uri, where=where, in_job=in_job, study_url=study)


def test_shared_stores_pass():
    check(["storage.ray_storage=s3://b/ray"], study="postgresql://u@db/optuna")
    check(["storage.shared=true", "storage.root=/mnt/shared"], study="journal:/mnt/shared/optuna.journal")
    check(["storage.shared=true", "storage.ray_storage=/mnt/nfs/ray"], in_job=False, where="on a 2-node cluster")


@pytest.mark.parametrize("overrides, uri, study, in_job, message", [
    ([], "sqlite:////tmp/mlflow.db", None, True, "--tracking-uri: sqlite:////tmp/mlflow.db is a local file, and in a "
                                                 "Ray job MLflow must be a server"),
    (["storage.ray_storage=s3://b/r"], "./mlruns", None, False, "--tracking-uri: ./mlruns is a local file, and on a "
                                                               "2-node cluster"),
    ([], SERVER, None, True, "storage.ray_storage: unset, so Ray checkpoints go to <storage.root>/ray = ./imm-runs/ray, "
                             "which is relative: in a Ray job that is inside the job's temporary working dir"),
    (["storage.ray_storage=/srv/ckpt"], SERVER, None, False, "storage.ray_storage: '/srv/ckpt' is on one node's disk, "
                                                             "and on a 2-node cluster the nodes share no disk"),
    (["storage.shared=true", "storage.ray_storage=ckpt"], SERVER, None, True, "storage.ray_storage: 'ckpt' is relative"),
    (["storage.ray_storage=s3://b/r"], SERVER, "journal:./imm-runs/optuna.journal", True,
     "storage: the study 'journal:./imm-runs/optuna.journal' is relative"),
    (["storage.ray_storage=s3://b/r"], SERVER, "journal:/srv/optuna.journal", False,
     "storage: the study 'journal:/srv/optuna.journal' is on one node's disk"),
    (["storage.ray_storage=s3://b/r", "storage.shared=true"], SERVER, "sqlite:////mnt/optuna.db", True,
     "storage: the study 'sqlite:////mnt/optuna.db' is an SQLite file"),
])
def test_stores_on_one_node_are_refused_naming_the_setting(overrides, uri, study, in_job, message):
    where = "in a Ray job" if in_job else "on a 2-node cluster"
    with pytest.raises(ConfigError) as e:
        check(overrides, uri, study, in_job, where)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)
    assert "storage.shared=true" in str(e.value) or "--tracking-uri http://HOST:5000" in str(e.value)


def submit_args(*argv):
    args = parse_args(["submit", *argv, "--cluster", "http://head:8265"])
    assert isinstance(args, argparse.Namespace)
    return args


def test_a_sweep_job_runs_the_cli_on_the_stores_checked_here(monkeypatch, tmp_path):
    monkeypatch.setenv("IMM_OPTUNA_STORAGE", "postgresql://optuna@db/optuna")  # the password: the nodes' PGPASSFILE
    monkeypatch.delenv("IMM_RAY_STORAGE", raising=False)
    job = plan_submission(submit_args("sweeps/toy2d_smoke.yaml", "train.steps=50", "--trials", "3", "--resume",
                                      "--tracking-uri", SERVER, "storage.ray_storage=s3://b/ray"))
    argv = shlex.split(job.entrypoint)
    assert argv[:5] == ["python", "-m", "orchestrator.cli", "sweep", "sweeps/toy2d_smoke.yaml"]
    assert argv[argv.index("--address") + 1] == "auto" and argv[argv.index("--tracking-uri") + 1] == SERVER
    assert "--resume" in argv and argv[argv.index("--trials") + 1] == "3" and "train.steps=50" in argv
    # pinned last, whatever the cluster's environment (IMM_RAY_STORAGE) says
    assert [a for a in argv if a.startswith("storage.ray_storage=")][-1] == "storage.ray_storage=s3://b/ray"
    # the study goes along as checked
    assert job.runtime_env["env_vars"]["IMM_OPTUNA_STORAGE"] == job.study == "postgresql://optuna@db/optuna"
    assert job.job_id.startswith("imm-toy2d_smoke-") and job.kind == "sweep"
    assert set(EXCLUDES) >= {"imm-runs", "*.pt", "*.npy", "data"} and job.runtime_env["excludes"] == EXCLUDES
    assert "py_modules" not in job.runtime_env  # the working dir is this checkout: the code is in it


def test_a_run_job_pins_its_name_and_a_file_outside_the_working_dir_is_refused(tmp_path):
    job = plan_submission(submit_args("toy2d", "imm.k=12", "--tracking-uri", SERVER, "storage.shared=true",
                                      "storage.root=/mnt/shared"))
    argv = shlex.split(job.entrypoint)
    assert argv[3:5] == ["train", "toy2d"] and argv[argv.index("--name") + 1] == job.name
    assert argv[argv.index("imm.k=12") + 1:][:3] == ["storage.shared=true", "storage.root=/mnt/shared",
                                                      "storage.ray_storage=/mnt/shared/ray"]
    assert job.job_id.startswith(f"imm-{job.name}-")
    outside = tmp_path / "mine.yaml"
    outside.write_text("method: imm\n")
    with pytest.raises(ConfigError, match="inside its working dir"):
        plan_submission(submit_args(str(outside), "--tracking-uri", SERVER, "storage.ray_storage=s3://b/ray"))
    with pytest.raises(ValueError, match="--resume: only for a sweep file"):
        plan_submission(submit_args("toy2d", "--resume", "--tracking-uri", SERVER, "storage.ray_storage=s3://b/ray"))


@pytest.mark.parametrize("setting, args", [
    ("IMM_OPTUNA_STORAGE", []),
    ("--tracking-uri", ["--tracking-uri", "http://user:p%40ss@mlflow:5000"]),
    ("storage.ray_storage", ["storage.ray_storage=s3://key:p%40ss@bucket/ray"]),
])
def test_a_credential_is_never_shipped_with_a_job(monkeypatch, setting, args):
    """A job's entrypoint and runtime env are shown to whoever lists the cluster's jobs: a URL with a password is
    refused in one line that names the setting and hides the password."""
    study = "postgresql://optuna:p%40ss:w%2Frd@db/optuna" if setting == "IMM_OPTUNA_STORAGE" else "postgresql://o@db/o"
    monkeypatch.setenv("IMM_OPTUNA_STORAGE", study)
    base = ["--tracking-uri", SERVER, "storage.ray_storage=s3://b/ray"]
    with pytest.raises(ConfigError) as e:
        plan_submission(submit_args("sweeps/toy2d_smoke.yaml", *base, *args))
    assert str(e.value).startswith(f"{setting}: ") and "holds a password" in str(e.value) and "PGPASSFILE" in \
        str(e.value) and "p%40ss" not in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_fit_check_counts_workers_per_node():
    from orchestrator.infra.fit import check, workers_that_fit

    four_gpus = {"CPU": 16.0, "GPU": 4.0}
    head = {"CPU": 0.0, "memory": 1e9}
    assert workers_that_fit({"CPU": 4, "GPU": 1}, [head, four_gpus, four_gpus]) == 8  # 4 GPUs a node, twice
    assert workers_that_fit({"CPU": 6, "GPU": 1}, [four_gpus]) == 2  # CPUs bind first
    assert workers_that_fit({"CPU": 0.5}, [{"CPU": 2.0}]) == 4
    check({"CPU": 4, "GPU": 1}, 8, [head, four_gpus, four_gpus], field="resources")  # fits across two nodes
    with pytest.raises(ConfigError, match=r"^resources: a trial needs 8 worker\(s\) of 4 CPUs, 1 GPU \(32 CPUs, 8 "
                       r"GPUs in all\) and the cluster's 2 node\(s\) hold 4 such worker\(s\) at once \(the "
                       r"largest node: 16 CPUs, 4 GPUs\)"):
        check({"CPU": 4, "GPU": 1}, 8, [head, four_gpus], field="resources")
