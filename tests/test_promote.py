"""Promotion, model URIs, sampling and evaluation on a real SQLite MLflow store, without Ray: the trial runs
are made by hand (tags as a sweep writes them) around a real checkpoint from the single-process trainer."""

from __future__ import annotations

import re
import shutil

import mlflow
import numpy as np
import pytest
import torch

from imm.train import train
from imm.trained import TrainedModel
from orchestrator import cli, load_model
from orchestrator.registry.promote import promote
from orchestrator.track import tracking

TINY = ["model.hidden=16", "model.depth=1", "model.emb_dim=16", "train.batch_size=64", "train.steps=20",
        "train.log_every=10", "eval.every=20", "eval.n_samples=100", "eval.steps=[1,2]", "train.checkpoint_every=20",
        "data.n_train=1000", "data.n_heldout=300"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from imm.config import load_config

    out = tmp_path_factory.mktemp("ckpt")
    train(load_config("toy2d", [*TINY, f"train.out_dir={out}"]), stream=open("/dev/null", "w"))  # noqa: SIM115
    return out


@pytest.fixture
def store(tmp_path, checkpoint):
    """A fresh SQLite store with three finished trials of sweep 'sw' (energy/steps_1 = 0.3, 0.1, 0.2), one failed
    trial with a better value, and a finished trial without the metric."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    exp = tracking.experiment_id(client, "exp", (tmp_path / "artifacts").as_uri())
    runs = {}
    for i, (value, status) in enumerate([(0.3, "FINISHED"), (0.1, "FINISHED"), (0.2, "FINISHED"), (0.01, "FAILED"),
                                         (None, "FINISHED")]):
        run = client.create_run(exp, run_name=f"sw-t{i}", tags={
            "imm.sweep": "sw", "imm.sweep.role": "trial", "imm.trial.number": str(i), "imm.run_name": f"sw-t{i}",
            "dataset": "8gaussians", "method": "imm", "mlflow.source.git.commit": "abc123", "git.dirty": "false",
            "imm.version.torch": "2.13.0", "imm.version.cuda": "13.0", "imm.data.digest": "5eed"})
        if value is not None:
            client.log_metric(run.info.run_id, "energy/steps_1", value, step=20)
            client.log_metric(run.info.run_id, "energy/steps_2", 1 - value, step=20)
        client.log_artifacts(run.info.run_id, str(checkpoint), "checkpoint")
        client.set_terminated(run.info.run_id, status)
        runs[i] = run.info.run_id
    return uri, client, runs


def test_promote_picks_the_best_finished_trial_and_moves_the_alias(store, capsys):
    uri, client, runs = store
    assert cli.main(["promote", "--sweep", "sw", "--metric", "energy/steps_1", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"run {runs[1]} (energy/steps_1 = 0.1) registered as new version 1 of 'sw'" in out
    assert "model uri: models:/sw@champion" in out
    v1 = client.get_model_version_by_alias("sw", "champion")
    assert str(v1.version) == "1" and v1.run_id == runs[1]
    assert {("imm.sweep", "sw"), ("imm.trial.number", "1"), ("imm.run_id", runs[1]), ("dataset", "8gaussians"),
            ("git.commit", "abc123"), ("metrics.energy/steps_1", "0.1"), ("metrics.energy/steps_2", "0.9"),
            ("imm.promoted.metric", "energy/steps_1"), ("git.dirty", "false"), ("imm.version.torch", "2.13.0"),
            ("imm.version.cuda", "13.0"), ("imm.data.digest", "5eed")} <= set(v1.tags.items())  # code, stack, data
    assert client.get_run(runs[1]).data.tags["imm.promoted"] == "sw/1@champion"

    # By another criterion the best run is another one: the alias moves, version 1 stays.
    p = promote(uri, sweep="sw", metric="energy/steps_2", mode="min")
    assert (p.version, p.run_id, p.previous_version, p.new_version) == ("2", runs[0], "1", True)
    assert client.get_model_version_by_alias("sw", "champion").run_id == runs[0]
    assert sorted(str(v.version) for v in client.search_model_versions("name = 'sw'")) == ["1", "2"]
    # Promoting the first run again reuses its version rather than registering a duplicate.
    again = promote(uri, run_id=runs[1], metric="energy/steps_1", model_name="sw")
    assert (again.version, again.new_version, again.previous_version) == ("1", False, "2")
    assert len(client.search_model_versions("name = 'sw'")) == 2


def test_promote_refuses_unfinished_runs_and_missing_metrics(store, capsys):
    uri, _, runs = store
    assert cli.main(["promote", "--run-id", runs[3], "--metric", "energy/steps_1", "--tracking-uri", uri]) == 2
    assert f"run {runs[3]} is FAILED, not FINISHED: only finished runs are promoted" in capsys.readouterr().err
    assert cli.main(["promote", "--run-id", runs[4], "--metric", "energy/steps_1", "--tracking-uri", uri]) == 2
    assert f"run {runs[4]} has no metric 'energy/steps_1'" in capsys.readouterr().err
    assert cli.main(["promote", "--sweep", "sw", "--metric", "fid/steps_1", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "no FINISHED run reports 'fid/steps_1' (runs: 1 FAILED, 4 FINISHED)" in err and "energy/steps_2" in err
    assert cli.main(["promote", "--sweep", "nope", "--metric", "energy/steps_1", "--tracking-uri", uri]) == 2
    assert "no trial runs of a sweep named 'nope'" in capsys.readouterr().err
    assert cli.main(["promote", "--sweep", "sw", "--metric", "energy/steps_1", "--alias", "latest",
                     "--tracking-uri", uri]) == 2
    assert "--alias: 'latest'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: exactly one of --run-id and --sweep
        cli.main(["promote", "--metric", "energy/steps_1"])
    assert mlflow.MlflowClient(uri).search_registered_models() == []  # nothing was registered


def test_every_kind_of_model_uri_samples_the_same(store, checkpoint, tmp_path, capsys):
    uri, client, runs = store
    promote(uri, sweep="sw", metric="energy/steps_1", model_name="toy")
    expected = load_model(str(checkpoint), device="cpu").sample(50, steps=2, seed=7)
    for model_uri in ("models:/toy@champion", "models:/toy/1", f"runs:/{runs[1]}", f"runs:/{runs[0]}",
                      f"runs:/{runs[1]}/checkpoint", str(checkpoint / "checkpoint.pt")):
        gen = load_model(model_uri, tracking_uri=uri, device="cpu")
        assert isinstance(gen, TrainedModel)
        assert torch.equal(gen.sample(50, steps=2, seed=7), expected), model_uri
    # The registered model is a plain MLflow PyTorch model.
    mlflow.set_tracking_uri(uri)
    plain = mlflow.pytorch.load_model("models:/toy@champion")
    assert torch.equal(plain.sample(50, 2, 7), expected)

    npy, png = tmp_path / "x.npy", tmp_path / "x.png"
    assert cli.main(["sample", "--model", "models:/toy@champion", "--steps", "2", "--n", "50", "--seed", "7",
                     "--out", str(npy), "--tracking-uri", uri]) == 0
    assert np.array_equal(np.load(npy), expected.numpy())
    assert cli.main(["sample", "--model", "models:/toy@champion", "--out", str(png), "--tracking-uri", uri]) == 0
    assert png.stat().st_size > 1000
    capsys.readouterr()
    for bad, message in [
        (["--model", "models:/toy@nobody"], "--model: models:/toy@nobody not found in"),
        (["--model", "runs:/0123456789abcdef"], "--model: no run '0123456789abcdef'"),
        (["--model", str(tmp_path / "empty")], "--model: nothing to load at"),
        (["--model", "models:/toy@champion", "--sampler", "euler"], "--sampler: 'euler' does not apply to method=imm"),
        (["--model", "models:/toy@champion", "--steps", "0"], "--steps: must be >= 1"),
        (["--model", "models:/toy@champion", "--out", str(tmp_path / "x.jpg")], "--out: unknown extension '.jpg'"),
    ]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        args = ["sample", "--out", str(npy), "--tracking-uri", uri, *bad]
        assert cli.main(args) == 2, bad
        assert message in capsys.readouterr().err, bad


def test_a_promoted_model_loads_without_unpickling_and_a_pickle_only_model_needs_trust(store, checkpoint, tmp_path,
                                                                                        capsys, monkeypatch):
    """Promoted models were only pickled modules, and loading one from a shared registry ran whatever was
    pickled. Now they carry safetensors weights and a JSON config, which `load_model` reads; a model holding only
    a pickle (promoted before) loads only with --trust-pickle."""
    uri, client, runs = store
    promote(uri, sweep="sw", metric="energy/steps_1", model_name="toy")
    files = {a.path for a in client.list_artifacts(runs[1], "model")}
    assert {"model/weights.safetensors", "model/model.json", "model/MLmodel"} <= files
    expected = load_model(str(checkpoint), device="cpu").sample(20, steps=2, seed=3)

    old = tmp_path / "old-model"  # as promoted before this change: the MLflow model, pickle only
    shutil.copytree(client.download_artifacts(runs[1], "model", str(tmp_path)), old)
    (old / "weights.safetensors").unlink()
    (old / "model.json").unlink()
    npy = tmp_path / "x.npy"
    args = ["sample", "--model", str(old), "--steps", "2", "--n", "20", "--seed", "3", "--out", str(npy)]
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds only a pickled model" in err and "--trust-pickle" in err, err
    assert cli.main([*args, "--trust-pickle"]) == 0 and np.array_equal(np.load(npy), expected.numpy())

    def unpickle(*args, **kwargs):
        raise AssertionError("a model was unpickled")

    monkeypatch.setattr(mlflow.pytorch, "load_model", unpickle)
    for model_uri in ("models:/toy@champion", f"runs:/{runs[1]}"):
        assert torch.equal(load_model(model_uri, tracking_uri=uri, device="cpu").sample(20, 2, 3), expected), model_uri


def test_eval_logs_the_metrics_of_a_model_uri_to_a_run_of_its_own(store, capsys):
    uri, client, runs = store
    promote(uri, sweep="sw", metric="energy/steps_1")
    assert cli.main(["eval", "--model", "models:/sw@champion", "--steps", "1", "2", "eval.features=rff", "--n", "200",
                     "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    run_id = re.search(r"^mlflow run id: (\w+)$", out, re.M).group(1)
    assert "features: rff (rff256-" in out
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) == {"energy/steps_1", "energy/steps_2", "fd/steps_1", "fd/steps_2"}
    assert run.data.tags["imm.eval.source_run_id"] == runs[1]
    assert run.data.tags["imm.eval.model_uri"] == "models:/sw@champion"
    assert run.data.params["eval.n_samples"] == "200" and run.data.params["eval.steps"] == "[1, 2]"
    assert run.info.experiment_id == client.get_run(runs[1]).info.experiment_id
    assert {a.path for a in client.list_artifacts(run_id, "samples")} == {"samples/steps_1.png", "samples/steps_2.png"}
    printed = {m: float(v) for m, v in re.findall(r"^(\S+/steps_\d)\s+(\S+)$", out, re.M)}
    assert printed == pytest.approx(run.data.metrics, rel=1e-5)  # printed to 6 significant digits

    assert cli.main(["eval", "--model", f"runs:/{runs[1]}", "--steps", "1", "--no-log", "--tracking-uri", uri]) == 0
    assert "mlflow run id" not in capsys.readouterr().out
    assert cli.main(["eval", "--model", f"runs:/{runs[1]}", "--steps", "x", "--tracking-uri", uri]) == 2
    assert "--steps: 'x' is not a step count" in capsys.readouterr().err
    assert cli.main(["eval", "--model", f"runs:/{runs[1]}", "eval.features=bogus", "--tracking-uri", uri]) == 2
    assert "eval.features: 'bogus' is not one of" in capsys.readouterr().err


def test_direct_mode_artifacts_go_to_s3_and_the_promoted_model_loads_from_there(s3_env, checkpoint, tmp_path,
                                                                                 monkeypatch):
    """MLflow's direct mode: IMM_MLFLOW_ARTIFACTS=s3://... makes new experiments keep their artifacts in S3, written
    by the client itself (credentials and AWS_ENDPOINT_URL_S3 from the environment: the session's moto server)."""
    s3_env.create_bucket(Bucket="direct")
    monkeypatch.setenv("IMM_MLFLOW_ARTIFACTS", "s3://direct/mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    run = client.create_run(tracking.experiment_id(client, "direct", tracking.artifact_root(uri)), run_name="d")
    assert run.info.artifact_uri.startswith("s3://direct/mlflow/")
    client.log_metric(run.info.run_id, "energy/steps_1", 0.5)
    client.log_artifacts(run.info.run_id, str(checkpoint), "checkpoint")
    client.set_terminated(run.info.run_id, "FINISHED")
    promote(uri, run_id=run.info.run_id, metric="energy/steps_1", model_name="direct")
    stored = {o["Key"].split("/artifacts/", 1)[1] for o in s3_env.list_objects_v2(Bucket="direct")["Contents"]}
    assert {"checkpoint/checkpoint.pt", "model/MLmodel", "model/data/model.pth"} <= stored
    assert load_model("models:/direct@champion", tracking_uri=uri, device="cpu").sample(10, 1, 0).shape == (10, 2)
