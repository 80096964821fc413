"""End to end on a real local Ray and a real SQLite MLflow store: a 3-trial sweep optimising the Frechet
distance, `promote --sweep`, sampling from models:/NAME@champion, and a second promotion moving the alias."""

from __future__ import annotations

import re

import mlflow
import numpy as np
import pytest
import yaml

from orchestrator import cli, load_model
from orchestrator.track import tracking

pytestmark = pytest.mark.slow
TINY = ["model.hidden=32", "model.depth=1", "train.steps=40", "train.batch_size=64", "train.log_every=20",
        "train.checkpoint_every=40", "eval.every=40", "eval.n_samples=300", "eval.steps=[1,2]"]


def test_sweep_promote_sample(ray_local, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "e2e",
        "base": {"config": "toy2d", "overrides": [*TINY, f"storage.root={tmp_path / 'runs'}"]},
        "space": {"imm.group_size": {"choices": [2, 4, 8]}, "train.lr": {"low": 3e-4, "high": 3e-3, "log": True}},
        "objective": "fd/steps_1",
        "sampler": {"name": "random", "seed": 0},
        "trials": 3,
        "max_concurrent": 2,
    }))
    assert cli.main(["sweep", str(sweep), "--tracking-uri", uri, "--experiment", "e2e"]) == 0
    capsys.readouterr()

    client = tracking.client(uri)
    exp = client.get_experiment_by_name("e2e").experiment_id
    trials = client.search_runs([exp], "tags.`imm.sweep.role` = 'trial'")
    assert len(trials) == 3 and all(r.info.status == "FINISHED" for r in trials)
    assert all({"fd/steps_1", "fd/steps_2", "energy/steps_1"} <= set(r.data.metrics) for r in trials)
    assert {r.data.tags["imm.eval.features"] for r in trials} == {"rff"}
    best = min(trials, key=lambda r: r.data.metrics["fd/steps_1"])

    assert cli.main(["promote", "--sweep", "e2e", "--metric", "fd/steps_1", "--tracking-uri", uri]) == 0
    assert "model uri: models:/e2e@champion" in capsys.readouterr().out
    champion = client.get_model_version_by_alias("e2e", "champion")
    assert champion.run_id == best.info.run_id
    assert champion.tags["imm.trial.number"] == best.data.tags["imm.trial.number"]
    assert float(champion.tags["metrics.fd/steps_1"]) == best.data.metrics["fd/steps_1"]

    out = tmp_path / "samples.npy"
    assert cli.main(["sample", "--model", "models:/e2e@champion", "--steps", "2", "--n", "500", "--out", str(out),
                     "--tracking-uri", uri]) == 0
    x = np.load(out)
    assert x.shape == (500, 2) and np.isfinite(x).all()
    assert np.array_equal(x, load_model("models:/e2e@champion", tracking_uri=uri).sample(500, 2, 0).numpy())
    mlflow.set_tracking_uri(uri)
    assert mlflow.pytorch.load_model("models:/e2e@champion").sample(8, 1, 0).shape == (8, 2)

    other = next(r for r in trials if r.info.run_id != best.info.run_id)
    assert cli.main(["promote", "--run-id", other.info.run_id, "--metric", "fd/steps_1", "--model-name", "e2e",
                     "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"alias 'champion' -> version 2 \(it pointed at version 1\)", printed)
    assert client.get_model_version_by_alias("e2e", "champion").run_id == other.info.run_id
    assert client.get_model_version("e2e", "1").run_id == best.info.run_id  # the old version stays
