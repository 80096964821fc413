"""Runs on a real local Ray (2 CPU workers) tracked in a real SQLite MLflow store: the tracked run and its
relaunch, a worker SIGKILLed mid-run, and one DDP step against the single-process step."""

from __future__ import annotations

import os
import re
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from imm.config import load_config
from orchestrator import cli
from orchestrator.run.launch import launch, plan_run
from orchestrator.run.worker import KillSwitch
from orchestrator.track import sample_grids, tracking

pytestmark = pytest.mark.slow
REPORT_STEPS = [5, 10, 15, 20, 25, 30, 35, 40]  # TINY_TOY2D: log every 5 of 40 steps, eval and checkpoint every 20


def _steps(client, run_id, key):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def _artifacts(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return out


def test_two_worker_run_is_tracked_in_mlflow_and_a_relaunch_resumes_it(ray_local, mlflow_uri, tiny_toy2d, capsys,
                                                                       tmp_path):
    argv = ["train", "toy2d", *tiny_toy2d, "--tracking-uri", mlflow_uri, "--experiment", "integration"]
    t0 = time.perf_counter()
    assert cli.main(argv) == 0
    wall = time.perf_counter() - t0
    out = capsys.readouterr().out
    run_id = re.search(r"^mlflow run id: (\w+)$", out, re.M).group(1)
    with capsys.disabled():
        print(f"\n2-worker toy run: {wall:.1f}s wall on an already started Ray (its start-up: {ray_local.startup_s:.1f}s)")

    progress = re.findall(r"^step (\d+)/40  loss \S+  [\d,]+ samples/s  ETA \S+", out, re.M)
    assert [int(s) for s in progress] == REPORT_STEPS  # one line per rank-0 report, on the driver

    client = tracking.client(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.num_workers"] == "2" and run.data.params["model.hidden"] == "32"
    assert run.data.params["eval.steps"] == "[1, 2]"
    assert run.data.tags["method"] == "imm" and run.data.tags["dataset"] == "8gaussians"
    assert run.data.tags["ray.address"].startswith("existing")
    (data,) = run.inputs.dataset_inputs  # lineage: what it trained on, by content (tests/test_data_digest.py)
    assert data.dataset.name == "8gaussians" and run.data.tags["imm.data.digest"].startswith(data.dataset.digest)
    assert _steps(client, run_id, "train/loss") == REPORT_STEPS
    assert _steps(client, run_id, "train/lr") == REPORT_STEPS[:1]  # constant (no warmup): logged once
    assert _steps(client, run_id, "throughput/samples_per_s") == REPORT_STEPS
    for k in (1, 2):
        assert _steps(client, run_id, f"energy/steps_{k}") == [20, 40]
    assert run.info.artifact_uri.startswith(tracking.artifact_root(mlflow_uri))  # beside mlflow.db
    files = _artifacts(client, run_id)
    assert "config.yaml" in files and "checkpoint/checkpoint.pt" in files
    # the samples stored once: one grid, a row per evaluation (steps 20 and 40), a column per step count (1, 2)
    assert set(files) == {"config.yaml", "checkpoint/checkpoint.pt", "samples.png"}, files
    with Image.open(client.download_artifacts(run_id, "samples.png", str(tmp_path))) as grid:
        assert len(sample_grids.rows_of(grid)) == 2 and grid.width == sample_grids.LABEL_W + 2 * sample_grids.CELL
    final = torch.load(client.download_artifacts(run_id, "checkpoint/checkpoint.pt", str(tmp_path)), weights_only=True)
    assert final["step"] == 40 and {"model", "ema", "config"} <= set(final) and "optimizer" not in final
    ckpt_dir = run.data.tags["imm.checkpoint_path"]
    assert ckpt_dir.endswith("checkpoint_0000040") and os.path.isfile(os.path.join(ckpt_dir, "checkpoint.pt"))
    kept = sorted(d for d in os.listdir(os.path.dirname(ckpt_dir)) if re.fullmatch(r"checkpoint_\d+", d))
    assert kept == ["checkpoint_0000020", "checkpoint_0000040"]  # train.keep_checkpoints=2

    # The same command again: Ray restores the finished run, MLflow continues the same run, nothing is repeated.
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"^mlflow run id: (\w+)$", out, re.M).group(1) == run_id
    assert "resumed from the checkpoint at step 40" in out and not re.search(r"^step \d+/40", out, re.M)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _steps(client, run_id, "train/loss") == REPORT_STEPS

    # The same command against another tracking store found these checkpoints, said "resumed from the
    # checkpoint at step 40" and left there a FINISHED run without metrics. Now it is refused before Ray starts.
    name, other = run.data.tags[tracking.RUN_NAME_TAG], f"sqlite:///{tmp_path / 'other.db'}"
    elsewhere = ["train", "toy2d", *tiny_toy2d, "--tracking-uri", other, "--experiment", "integration"]
    assert cli.main(elsewhere) == 2
    assert capsys.readouterr().err == (
        f"imm-orch: error: --name: the checkpoints of run {name!r} ({os.path.dirname(ckpt_dir)}) belong to MLflow run "
        f"{run_id} at {mlflow_uri}, which {other} does not hold; continue it with --tracking-uri {mlflow_uri}, or "
        "start a new run with --name OTHER\n")
    assert tracking.client(other).get_experiment_by_name("integration") is None  # nothing was created there
    # another URI of the store that holds the run continues it
    alias = mlflow_uri.replace("/mlflow.db", "/./mlflow.db")
    assert alias != mlflow_uri and cli.main(["train", "toy2d", *tiny_toy2d, "--tracking-uri", alias, "--experiment",
                                             "integration"]) == 0
    assert re.search(r"^mlflow run id: (\w+)$", capsys.readouterr().out, re.M).group(1) == run_id

    # A run started from this one's weights (train.init_from, on Ray: the worker loads it) names its parent.
    assert cli.main([*argv, "train.init_from=runs:/" + run_id, "--name", "child"]) == 0
    child = client.get_run(re.search(r"^mlflow run id: (\w+)$", capsys.readouterr().out, re.M).group(1))
    assert child.info.status == "FINISHED" and child.info.run_id != run_id
    assert (child.data.tags["imm.parent_model"], child.data.tags["imm.parent_run_id"]) == (f"runs:/{run_id}", run_id)

    # An IMM model has no velocity to teach (one line, before Ray); a flow-matching run distilled into TVM
    # over DDP (the worker loads the teacher) names its teacher
    assert cli.main([*argv, "method=tvm", f"train.teacher=runs:/{run_id}", "--name", "no-teacher"]) == 2
    assert "train.teacher: runs:/" in (err := capsys.readouterr().err) and "has no velocity to distill" in err
    assert cli.main([*argv, "method=fm", "--name", "fm-teacher"]) == 0
    fm_id = re.search(r"^mlflow run id: (\w+)$", capsys.readouterr().out, re.M).group(1)
    assert cli.main([*argv, "method=tvm", f"train.teacher=runs:/{fm_id}", "--name", "student"]) == 0
    student = client.get_run(re.search(r"^mlflow run id: (\w+)$", capsys.readouterr().out, re.M).group(1))
    assert student.info.status == "FINISHED" and "energy/steps_2" in student.data.metrics
    assert (student.data.tags["imm.teacher"], student.data.tags["imm.teacher_run_id"]) == (f"runs:/{fm_id}", fm_id)


def test_sigkilled_worker_restarts_from_checkpoint_in_the_same_mlflow_run(ray_local, mlflow_uri, tiny_toy2d,
                                                                          tmp_path, capsys):
    cfg = load_config("toy2d", [*tiny_toy2d, "trainer.max_failures=1"])
    plan = plan_run(cfg, name="killed", tracking_uri=mlflow_uri, experiment="fault")
    marker = tmp_path / "killed-once"
    # rank 1 dies by SIGKILL right after step 30: past the checkpoint at 20, with 25 and 30 reported.
    result = launch(plan, ray_address="test", kill=KillSwitch(step=30, rank=1, marker=str(marker)))
    out = capsys.readouterr().out

    assert marker.read_text().startswith("killed rank 1 pid ")
    killed_pid = int(marker.read_text().split()[4])
    with pytest.raises(ProcessLookupError):
        os.kill(killed_pid, 0)
    # one line says what happened: the rank, its node, the step, the checkpoint, the attempt
    assert re.search(r"^workers restarted, attempt 2 of 2: rank 1 on [\d.]+/\w+ \(\w+Error: .+\) after step 30; "
                     r"resumed from the checkpoint at step 20$", out, re.M), out

    client = tracking.client(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("fault").experiment_id])
    assert [r.info.run_id for r in runs] == [result.run_id]  # the same MLflow run, start to finish
    assert runs[0].info.status == "FINISHED"
    steps = _steps(client, result.run_id, "train/loss")
    assert steps == REPORT_STEPS  # continuous and strictly increasing: no gap, no repeated 25 or 30
    for k in (1, 2):
        assert _steps(client, result.run_id, f"energy/steps_{k}") == [20, 40]
    assert result.checkpoint.endswith("checkpoint_0000040")


def test_crashed_run_fails_cleanly_and_relaunching_the_command_resumes_it(ray_local, mlflow_uri, tiny_toy2d,
                                                                          tmp_path, monkeypatch, capsys):
    argv = ["train", "toy2d", *tiny_toy2d, "--tracking-uri", mlflow_uri, "--experiment", "relaunch"]
    # No retries: rank 0, the one that writes to MLflow, is SIGKILLed after its report at step 25.
    monkeypatch.setenv("IMM_ORCH_KILL_WORKER", f"step=25,rank=0,marker={tmp_path / 'killed-once'}")
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("imm-orch: training failed: ") and "rerun the same command to resume" in err[-1]
    client = tracking.client(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("relaunch").experiment_id])
    assert run.info.status == "FAILED"
    assert _steps(client, run.info.run_id, "train/loss") == [5, 10, 15, 20]  # only what the checkpoint covers

    assert cli.main(argv) == 0  # the marker keeps the drill from firing again
    out = capsys.readouterr().out
    assert re.search(r"^mlflow run id: (\w+)$", out, re.M).group(1) == run.info.run_id
    assert "resumed from the checkpoint at step 20" in out
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert _steps(client, run.info.run_id, "train/loss") == REPORT_STEPS


def _ddp_step(config):
    """One IMM step on this worker's half of the groups of a fixed batch; saves the averaged gradients."""
    import ray.train
    from torch.nn.parallel import DistributedDataParallel

    from imm.config import config_from_dict
    from imm.methods import build_loss, build_model

    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(0)
    model = build_model(cfg, (2,), 1.0)
    model.load_state_dict(config["state"])
    ddp = DistributedDataParallel(model)  # what imm.training.loop.train_loop does when world_size > 1
    loss_fn, batch = build_loss(cfg), config["batch"]
    groups = batch.s.shape[0] // world
    g, p = slice(rank * groups, (rank + 1) * groups), slice(rank * groups * cfg.imm.group_size,
                                                           (rank + 1) * groups * cfg.imm.group_size)
    mine = type(batch)(s=batch.s[g], r=batch.r[g], t=batch.t[g], x_t=batch.x_t[p], x_r=batch.x_r[p])
    loss_fn.objective(ddp, mine).backward()
    torch.save({"grads": [q.grad for q in model.parameters()], "rows": len(mine.x_t)},
               os.path.join(config["out"], f"rank{rank}.pt"))
    ray.train.report({"done": 1})


def test_one_ddp_step_matches_the_single_process_step(ray_local, tmp_path):
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from imm.data import load_data
    from imm.methods import build_loss, build_model

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable on workers
    cfg = load_config("toy2d", ["model.hidden=32", "model.depth=1", "train.batch_size=64", "trainer.num_workers=2"])
    torch.manual_seed(0)
    model = build_model(cfg, (2,), 1.0)
    data = load_data(cfg.data).train
    loss_fn = build_loss(cfg)
    batch = loss_fn.draw(data[:64], torch.tensor(1.0))  # 16 groups of M=4 with their times and noise
    loss_fn.objective(model, batch).backward()
    expected = [q.grad.clone() for q in model.parameters()]

    config = {"cfg": OmegaConf.to_container(cfg, resolve=True), "batch": batch,
              "state": model.state_dict(), "out": str(tmp_path)}
    TorchTrainer(
        _ddp_step,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name="ddp", storage_path=str(tmp_path / "ray")),
    ).fit()

    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["rows"] == 32  # each worker sees half of the 64 rows
        for g, e in zip(got["grads"], expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)  # DDP averaged the two halves' gradients
