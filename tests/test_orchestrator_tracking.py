"""MLflow bookkeeping without Ray: a real SQLite store, the run found again on relaunch, and rank 0's logger
never leaving a duplicated step when an attempt dies past its last checkpoint."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from imm.config import ConfigError, load_config
from orchestrator.infra import storage
from orchestrator.run.launch import plan_run
from orchestrator.track import rank_zero, tracking


def _history(client, run_id, key="train/loss"):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _metrics(step, loss):
    return {"train/loss": loss, "train/lr": 1e-3, "throughput/samples_per_s": 100.0, "step": step}


@pytest.fixture
def run(mlflow_uri, tmp_path, request):
    cfg = load_config("toy2d", [f"storage.root={tmp_path}"])
    client = tracking.client(mlflow_uri)
    exp = tracking.experiment_id(client, request.node.name, (tmp_path / "artifacts").as_uri())
    tags = tracking.run_tags(cfg, "r1", str(tmp_path / "ray"), "test")
    run_id, resumed = tracking.open_run(client, exp, cfg, tags)
    assert not resumed
    return client, run_id, exp, cfg, tags


def test_flatten_gives_dotted_param_names():
    flat = tracking.flatten({"imm": {"k": 12, "kernel": "laplace"}, "eval": {"steps": [1, 2]}, "T": None})
    assert flat == {"imm.k": "12", "imm.kernel": "laplace", "eval.steps": "[1, 2]", "T": "None"}


def test_open_run_logs_params_tags_and_config(run, mlflow_uri, tmp_path):
    """Every run logged ~80 params (the whole config), which buried the ones that matter in the UI's
    runs table. Params: the keys that identify a run, then those asked for (a trial's swept keys, a run's
    overrides), floats at 6 digits; the whole config stays in config.yaml and the searchable `imm.config` tag."""
    client, run_id, exp, cfg, tags = run
    r = client.get_run(run_id)
    assert r.info.status == "RUNNING"
    assert set(r.data.params) == set(tracking.IDENTITY_KEYS)
    assert r.data.params["data.name"] == "8gaussians" and r.data.params["train.steps"] == str(cfg.train.steps)
    other = cfg.copy()
    other.train.lr = 1 / 3
    shown, _ = tracking.open_run(client, exp, other, {**tags, tracking.RUN_NAME_TAG: "r2"},
                                 param_keys=("train.lr", "imm.kernel", "eval.steps"), title="t7 lr=0.333")
    s = client.get_run(shown)
    assert s.info.run_name == "t7 lr=0.333"
    assert {k: s.data.params[k] for k in ("train.lr", "imm.kernel", "eval.steps")} == {
        "train.lr": "0.333333", "imm.kernel": "laplace", "eval.steps": "[1, 2, 4, 8]"}
    found = client.search_runs([exp], filter_string="tags.`imm.config` LIKE '%\"imm.kernel\": \"laplace\"%'")
    assert {x.info.run_id for x in found} == {run_id, shown}  # any config key, searched
    assert client.get_experiment(exp).tags[tracking.KIND_TAG] == "custom_model_development"  # the UI opens on runs
    assert r.data.tags["method"] == "imm" and r.data.tags["dataset"] == "8gaussians"
    assert r.data.tags["ray.address"] == "test"
    assert len(r.data.tags["mlflow.source.git.commit"]) == 40
    assert "config.yaml" in [f.path for f in client.list_artifacts(run_id)]


def test_relaunch_finds_the_same_run_and_sets_it_running(run):
    client, run_id, exp, cfg, tags = run
    tracking.close_run(client, run_id, "FAILED")
    again, resumed = tracking.open_run(client, exp, cfg, tags)
    assert (again, resumed) == (run_id, True)
    assert client.get_run(run_id).info.status == "RUNNING"
    other, resumed = tracking.open_run(client, exp, cfg, {**tags, tracking.STORAGE_TAG: "/elsewhere"})
    assert other != run_id and not resumed


def test_relaunch_with_changed_config_keeps_first_params_and_warns(run):
    client, run_id, exp, cfg, tags = run
    changed = cfg.copy()
    changed.train.steps = 123
    err = io.StringIO()
    tracking.open_run(client, exp, changed, tags, stream=err)
    assert "train.steps" in err.getvalue()
    assert client.get_run(run_id).data.params["train.steps"] == str(cfg.train.steps)


def test_metrics_are_held_until_a_checkpoint_covers_them(run, mlflow_uri):
    client, run_id, *_ = run
    log = rank_zero.RankZeroLogger(mlflow_uri, run_id)
    for step in (5, 10, 15):
        log.record(_metrics(step, 1.0))
    assert _history(client, run_id) == []
    log.record(_metrics(20, 0.5))
    log.commit()
    assert [s for s, _ in _history(client, run_id)] == [5, 10, 15, 20]
    assert [s for s, _ in _history(client, run_id, "throughput/samples_per_s")] == [5, 10, 15, 20]
    log.close()


def test_attempt_dying_past_its_checkpoint_leaves_no_duplicate_step(run, mlflow_uri):
    client, run_id, *_ = run
    first = rank_zero.RankZeroLogger(mlflow_uri, run_id)
    for step in (5, 10, 15, 20):
        first.record(_metrics(step, 1.0))
    first.commit()  # checkpoint at 20 saved
    first.record(_metrics(25, 9.0))
    first.record(_metrics(30, 9.0))  # ... then the worker dies: 25 and 30 are computed again
    first.close()

    second = rank_zero.RankZeroLogger(mlflow_uri, run_id)  # restored from step 20
    for step in (25, 30, 35, 40):
        second.record(_metrics(step, 2.0))
    second.commit()
    hist = _history(client, run_id)
    assert [s for s, _ in hist] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert dict(hist)[25] == 2.0  # the value of the attempt whose weights carried on


def test_an_attempt_dying_between_its_checkpoint_and_its_commit_loses_no_metric(run, mlflow_uri, tmp_path):
    """The checkpoint is saved, then its metrics are sent: a worker killed in between (a sweep's driver SIGKILLed,
    its orphaned trial killed by Ray) lost them, and the attempt that restores that checkpoint never computes them
    again. The checkpoint carries them, and the restoring attempt sends what the run lacks."""
    client, run_id, *_ = run
    first = rank_zero.RankZeroLogger(mlflow_uri, run_id)
    for step in (10, 20):
        first.record(_metrics(step, 1.0))
    first.commit()  # checkpoint at 20
    for step in (30, 40):
        first.record(_metrics(step, 3.0))
    ckpt = tmp_path / "checkpoint_40"
    ckpt.mkdir()
    first.stash(str(ckpt))  # checkpoint at 40 saved ... and the worker dies before commit()
    first.close()
    assert [s for s, _ in _history(client, run_id)] == [10, 20]

    second = rank_zero.RankZeroLogger(mlflow_uri, run_id)  # restored from step 40: trains no further
    second.recover(rank_zero.read_pending(ckpt))
    assert _history(client, run_id) == [(10, 1.0), (20, 1.0), (30, 3.0), (40, 3.0)]
    second.recover(rank_zero.read_pending(ckpt))  # restored again: nothing twice
    assert [s for s, _ in _history(client, run_id)] == [10, 20, 30, 40]
    assert rank_zero.read_pending(tmp_path) is None


def test_a_cut_off_attempt_failing_late_leaves_the_later_attempts_finished_run_alone(run):
    """The partitioned worker's attempt fails once its link is back, after the later attempt finished the run:
    its FAILED must not land; a run still RUNNING does take an attempt's failure."""
    client, run_id, *_ = run
    tracking.close_attempt(client, run_id, "FINISHED")  # the later attempt
    tracking.close_attempt(client, run_id, "FAILED")  # the cut-off one, late
    assert client.get_run(run_id).info.status == "FINISHED"
    client.update_run(run_id, status="RUNNING")
    tracking.close_attempt(client, run_id, "FAILED")
    assert client.get_run(run_id).info.status == "FAILED"


def test_metrics_are_logged_at_6_digits_and_the_learning_rate_when_it_changes(run, mlflow_uri):
    client, run_id, *_ = run
    log = rank_zero.RankZeroLogger(mlflow_uri, run_id)
    for step, lr in ((10, 1e-4), (20, 2e-4), (30, 2e-4), (40, 2e-4)):
        log.record({**_metrics(step, 0.123456789), "train/lr": lr})
    log.commit()
    lr = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/lr")]
    assert sorted(lr) == [(10, 1e-4), (20, 2e-4)]
    assert {m.value for m in client.get_metric_history(run_id, "train/loss")} == {0.123457}


def test_steps_already_in_the_run_are_skipped(run, mlflow_uri):
    """If Ray restores a checkpoint older than the last one rank 0 saw saved, nothing is logged twice."""
    client, run_id, *_ = run
    first = rank_zero.RankZeroLogger(mlflow_uri, run_id)
    for step in (10, 20, 30):
        first.record(_metrics(step, 1.0))
    first.commit()
    second = rank_zero.RankZeroLogger(mlflow_uri, run_id)  # restored from step 20
    assert second.logged_through == 30
    for step in (30, 40):
        second.record(_metrics(step, 2.0))
    second.commit()
    assert _history(client, run_id) == [(10, 1.0), (20, 1.0), (30, 1.0), (40, 2.0)]


def test_samples_are_one_grid_sent_with_their_checkpoint_and_continued_after_a_restart(run, mlflow_uri, tmp_path):
    """Each evaluation's samples were image cards hidden under the run's params; they were stored
    three times. Now one artifact, samples.png: a row per evaluation, a column per sampling step count, 2D samples
    over faint data; sent only once a checkpoint covers its step; a restarted worker appends to the logged rows."""
    from PIL import Image

    from orchestrator.track import sample_grids

    client, run_id, *_ = run
    torch.manual_seed(0)  # CI: 50 unseeded 1-pixel samples once left too few pure-blue pixels after downscaling
    reference = torch.randn(2000, 2)
    log = rank_zero.RankZeroLogger(mlflow_uri, run_id, final_step=60)
    log.on_eval(20, {1: torch.randn(500, 2), 2: torch.randn(500, 2)}, reference=reference)
    log.record(_metrics(20, 1.0))
    assert "samples.png" not in {f.path for f in client.list_artifacts(run_id)}
    log.commit()
    log.on_eval(40, {1: torch.randn(50, 2), 2: torch.randn(50, 2)}, reference=reference)
    log.record(_metrics(40, 1.0))
    log.close()  # the worker dies before the checkpoint at 40: that row is never sent

    again = rank_zero.RankZeroLogger(mlflow_uri, run_id, final_step=60)  # restarted from step 20
    for step in (40, 60):
        again.on_eval(step, {1: torch.randn(50, 2), 2: torch.randn(50, 2)}, reference=reference)
        again.record(_metrics(step, 1.0))
    again.commit()
    again.close()
    assert {f.path for f in client.list_artifacts(run_id)} == {"config.yaml", "samples.png"}  # nothing else
    with Image.open(client.download_artifacts(run_id, "samples.png", str(tmp_path))) as grid:
        rows = sample_grids.rows_of(grid.copy())
        assert grid.width == sample_grids.LABEL_W + 2 * sample_grids.CELL
    assert len(rows) == 3  # steps 20, 40, 60: each once
    cell = np.asarray(sample_grids.cells_of(rows[0])[0].convert("RGB")).reshape(-1, 3)
    grey = (np.abs(cell - 204) < 8).all(1).mean()  # the data, in light grey (0.8), behind the samples
    blue = ((cell[:, 2] > 150) & (cell[:, 0] < 100)).mean()
    assert grey > 0.002 and blue > 0.0005, (grey, blue)


def test_embedded_default_keeps_everything_under_storage_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plan = plan_run(load_config("toy2d", [f"storage.root={tmp_path}"]))
    assert plan.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert plan.storage.path == str(tmp_path / "ray") and not plan.storage.is_s3
    assert tracking.artifact_root(plan.tracking_uri) == (tmp_path / "artifacts").as_uri()
    assert plan_run(plan.cfg, tracking_uri="http://mlflow:5000").tracking_uri == "http://mlflow:5000"
    assert tracking.artifact_root("http://mlflow:5000") is None
    monkeypatch.chdir(tmp_path)
    assert plan_run(plan.cfg, tracking_uri="sqlite:///rel/m.db").tracking_uri == f"sqlite:///{tmp_path / 'rel' / 'm.db'}"


def test_s3_storage_uses_an_explicit_endpoint(tmp_path, monkeypatch):
    from pyarrow import fs

    cfg = load_config("toy2d", ["storage.ray_storage=s3://bucket/some/prefix/"])
    st = storage.ray_storage(cfg)
    assert (st.uri, st.path, st.is_s3) == ("s3://bucket/some/prefix", "bucket/some/prefix", True)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    expected = fs.S3FileSystem(endpoint_override="127.0.0.1:9000", scheme="http", region="us-east-1")
    assert st.filesystem().equals(expected)
    with pytest.raises(ConfigError, match="storage.ray_storage"):
        storage.ray_storage(load_config("toy2d", ["storage.ray_storage=gs://bucket/x"]))
