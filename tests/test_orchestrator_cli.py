"""`imm-orch train` before any cluster: help, --dry-run, and bad input failing fast with one line naming the field."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from imm.config import load_config
from orchestrator import cli
from orchestrator.infra import preflight
from orchestrator.track import tracking


def test_train_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "examples:" in out and "imm-orch train toy2d" in out and "ray job submit" in out
    for option in ("--address", "--tracking-uri", "--experiment", "--dry-run", "--name", "--debug"):
        assert option in out


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["imm.bogus=1"], "imm.bogus"),
        (["imm.kernel=cosine"], "imm.kernel"),
        (["train.lr=-1"], "train.lr"),
        (["trainer.num_workers=2", "train.batch_size=64", "imm.group_size=3"], "imm.group_size"),
        (["trainer.num_workers=3", "train.batch_size=64"], "train.batch_size"),
        (["storage.ray_storage=gs://bucket/x"], "storage.ray_storage"),
        (["name=has/slash"], "name"),
        (["eval.inception_weights=/no/such/pt_inception.pth"], "eval.inception_weights"),
        (["eval.features=inception"], "eval.inception_weights"),
        (["eval.features=fancy"], "eval.features"),
        (["eval.reference=/no/such/VIRTUAL_imagenet256_labeled.npz"], "eval.reference"),
        (["eval.vae=/no/such/vae"], "eval.vae"),
    ],
    ids=["unknown-key", "bad-choice", "bad-range", "M-not-dividing-per-worker-batch", "uneven-split", "bad-storage",
         "bad-name", "missing-inception-weights", "inception-without-weights", "bad-features", "missing-reference",
         "missing-vae"],
)
def test_bad_input_fails_before_ray_naming_the_field(overrides, field, capsys, no_ray, tmp_path):
    code = cli.main(["train", "toy2d", f"storage.root={tmp_path}", *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("imm-orch: error: ")
    assert field in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_run_without_gpu_fails_before_ray(capsys, no_ray):
    assert cli.main(["train", "toy2d", "trainer.use_gpu=true"]) == 2
    assert "trainer.use_gpu" in capsys.readouterr().err


def test_dry_run_prints_the_effective_per_worker_and_micro_batch(capsys, no_ray, tiny_toy2d):
    """With train.accumulate the plan says what one update sees and what one forward pass holds."""
    assert cli.main(["train", "toy2d", "--dry-run", *tiny_toy2d, "train.accumulate=4", "imm.group_size=2"]) == 0
    out = capsys.readouterr().out
    assert "batch:        64 per update = 2 x 32, each worker's in 4 micro-batches of 8 (train.accumulate)" in out


def test_dry_run_prints_resolved_config_and_resources_without_ray(capsys, no_ray, tmp_path, tiny_toy2d):
    code = cli.main(["train", "toy2d", "--dry-run", *tiny_toy2d, "imm.group_size=2", "--name", "tiny", "--experiment", "e1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "group_size: 2" in out and "hidden: 32" in out and "name: tiny" in out  # the resolved config
    assert "2 x (1 CPU) = 2 CPU" in out and "gloo" in out and "per-worker batch 32" in out
    assert "batch:        64 per update = 2 x 32\n" in out
    assert f"{tmp_path / 'runs' / 'ray' / 'tiny'}" in out
    assert "experiment 'e1'" in out and "sqlite:///" in out
    assert not (tmp_path / "runs").exists()


def test_default_run_name_is_the_same_for_the_same_command(capsys, no_ray):
    def name(*args):
        assert cli.main(["train", "toy2d", "--dry-run", *args]) == 0
        return next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("run name:")).split()[-1]

    first = name("train.steps=10")
    assert first.startswith("imm-8gaussians-")
    assert name("train.steps=10") == first
    assert name("train.steps=11") != first
    assert name("train.steps=10", "--name", "mine") == "mine"


def test_options_may_come_after_overrides(capsys, no_ray):
    assert cli.main(["train", "toy2d", "train.steps=7", "--dry-run", "eval.every=7", "--name", "n1"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "every: 7" in out and "run name:     n1" in out


def test_console_script_user_error_is_one_line_and_debug_shows_traceback(tmp_path):
    cmd = [sys.executable, "-m", "orchestrator.cli", "train", "toy2d", "imm.group_size=3", f"storage.root={tmp_path}"]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [
        "imm-orch: error: imm.group_size: M=3 must divide the per-worker batch "
        "train.batch_size / trainer.num_workers = 512/1 = 512"
    ]
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_progress_line_shows_step_loss_throughput_eta_quality_and_restarts():
    import io

    from orchestrator.run.printer import ProgressPrinter

    out = io.StringIO()
    printer = ProgressPrinter(100, max_failures=2, stream=out)
    base = {"train/loss": 0.25, "train/lr": 1e-3, "throughput/samples_per_s": 12345.6}
    printer({"event": "started", "step": 0, "nodes": ["10.0.0.1/aa", "10.0.0.2/bb"]})  # the first group: nothing to say
    printer({**base, "step": 10, "time": 1000.0})
    printer({**base, "step": 20, "time": 1010.0, "energy/steps_1": 0.123})  # 1 step/s: 80 s to go
    printer({**base, "step": 30, "time": 1020.0})
    # A restart printed Ray's tracebacks but no line saying what happened.
    printer({"event": "failed", "ranks": {0: "RuntimeError: [gloo] Connection reset by peer",  # from the controller:
                                          1: "ActorDiedError: The actor died unexpectedly"}})  # the dead one is named
    printer({"event": "resumed", "step": 20, "nodes": ["10.0.0.1/aa", "10.0.0.3/cc"]})  # Ray restarted the workers
    printer({"event": "started", "step": 0})  # ... and again, with no failure told (nor a checkpoint registered)
    assert out.getvalue().splitlines() == [
        "step 10/100  loss 0.25  12,346 samples/s  ETA --:--:--",
        "step 20/100  loss 0.25  12,346 samples/s  ETA 00:01:20  energy/steps_1=0.123",
        "step 30/100  loss 0.25  12,346 samples/s  ETA 00:01:10",
        "workers restarted, attempt 2 of 3: rank 1 on 10.0.0.2/bb (ActorDiedError: The actor died unexpectedly) "
        "after step 30; resumed from the checkpoint at step 20",
        "workers restarted, attempt 3 of 3: a worker died after step 30; started over from step 0",
    ]
    relaunched = io.StringIO()
    ProgressPrinter(100, stream=relaunched)({"event": "resumed", "step": 40})  # a relaunched run's first worker group
    assert relaunched.getvalue() == "resumed from the checkpoint at step 40\n"


@pytest.mark.parametrize("argv", [
    ["train", "toy2d"],
    ["sweep", "sweeps/toy2d_smoke.yaml"],
    ["promote", "--sweep", "toy2d_smoke", "--metric", "energy/steps_2"],
    ["sample", "--model", "models:/toy2d_smoke@champion", "--out", "x.png"],
    ["eval", "--model", "runs:/0123456789abcdef"],
])
def test_a_tracking_server_that_does_not_answer_is_one_line_before_anything_starts(argv, capsys, no_ray):
    """`train` started Ray and retried for minutes; `promote` gave up after 250 s with a traceback."""
    t0 = time.perf_counter()
    assert cli.main([*argv, "--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imm-orch: error: --tracking-uri: no MLflow server answers at http://127.0.0.1:9 ("), err
    assert err.count("\n") == 1 and time.perf_counter() - t0 < 10


def test_a_missing_or_malformed_data_set_is_one_line_before_ray_starts(tmp_path, capsys, no_ray):
    """These failed only inside the workers, 20-40 s after Ray started, with a FAILED run."""
    import numpy as np

    np.save(tmp_path / "cube.npy", np.zeros((4, 2, 2), np.float32))
    (tmp_path / "empty").mkdir()
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    (tmp_path / "deep" / "a" / "b" / "x.png").write_bytes(b"")  # two levels down: not part of the data set
    cases = {
        f"npy:{tmp_path / 'missing.npy'}": "npy file",
        f"npy:{tmp_path / 'cube.npy'}": "must hold an (N, D) numeric array, got shape (4, 2, 2)",
        f"folder:{tmp_path / 'empty'}": "no images",
        f"folder:{tmp_path / 'deep'}": "no images",
        f"folder:{tmp_path / 'nowhere'}": "not found",
        f"cifar10:{tmp_path / 'empty'}": "holds neither ['train_x.npy'",
    }
    for name, message in cases.items():
        for argv in (["train", "toy2d"], ["sweep", "sweeps/toy2d_smoke.yaml", "--dry-run"]):
            assert cli.main([*argv, f"data.name={name}", f"storage.root={tmp_path / 'runs'}"]) == 2, (name, argv)
            err = capsys.readouterr().err
            assert err.startswith("imm-orch: error: data.name: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_s3_places_are_probed_before_ray_starts(s3_env, tmp_path, capsys, monkeypatch, no_ray):
    """The S3 endpoint, buckets and objects a run uses are checked in one line, within 10 s,
    before Ray starts and before any MLflow run (the real S3 server of the session; a port where none listens)."""
    s3_env.create_bucket(Bucket="probed")
    s3_env.put_object(Bucket="probed", Key="data/points.npy", Body=b"")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cases = [
        (["storage.ray_storage=s3://no-such-bucket/ray"], "storage.ray_storage: s3://no-such-bucket/ray cannot be used "
         "(no such bucket; endpoint http://127.0.0.1:"),
        (["data.name=npy:s3://probed/data/missing.npy"], "data.name: nothing at s3://probed/data/missing.npy"),
        (["eval.features=inception", "eval.inception_weights=s3://probed/pt_inception.pth"],
         "eval.inception_weights: nothing at s3://probed/pt_inception.pth"),
    ]
    for overrides, message in cases:
        for argv in (["train", "toy2d"], ["sweep", "sweeps/toy2d_smoke.yaml"]):
            assert cli.main([*argv, *overrides, "--tracking-uri", uri]) == 2, (overrides, argv)
            err = capsys.readouterr().err
            assert err.startswith(f"imm-orch: error: {message}") and err.count("\n") == 1, err
    for ok in (["storage.ray_storage=s3://probed/ray"], ["data.name=npy:s3://probed/data/points.npy"]):
        preflight.check_s3(load_config("toy2d", ok))  # these are there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    assert cli.main(["train", "toy2d", "storage.ray_storage=s3://probed/ray", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imm-orch: error: storage.ray_storage: s3://probed/ray cannot be reached (") and \
        "AWS_ENDPOINT_URL_S3" in err and err.count("\n") == 1, err
    assert time.perf_counter() - t0 < 10
    assert not tracking.client(uri).search_experiments(filter_string="name = 'imm'")  # no run, no experiment


def test_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    """A truncated checkpoint given to `sample` printed torch.load's traceback."""
    good = tmp_path / "good.pt"
    torch.save({"config": {"method": "imm"}, "step": 1, "model": {"w": torch.zeros(1000)}}, good)
    truncated, text = tmp_path / "truncated" / "checkpoint.pt", tmp_path / "text.pt"
    truncated.parent.mkdir()
    truncated.write_bytes(good.read_bytes()[:300])
    text.write_text("not a checkpoint\n")
    for path in (truncated.parent, text):
        assert cli.main(["sample", "--model", str(path), "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("imm-orch: error: ") and "is not a readable checkpoint" in err and err.count("\n") == 1, err
