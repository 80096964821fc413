"""Sweeps of a trained model (`model:` in the sweep file, e.g. sweeps/imagenet256_cfg.yaml): each trial evaluates
it with its own sample.* / eval.* params; nothing is trained. On the session's Ray with a small class-conditional
digits model trained here."""

from __future__ import annotations

import pytest
import yaml

from imm.config import ConfigError, load_config
from orchestrator import cli
from orchestrator.sweep.spec import load_sweep, sweep_from_dict
from orchestrator.track import tracking

BASE = ["model.class_conditional=true", "model.hidden=64", "model.depth=2", "train.batch_size=64",
        "eval.n_samples=300", "eval.steps=[1,2]", "eval.features=none"]


def spec(tmp_path, **changes) -> dict:
    return {"name": "cfg", "model": str(tmp_path / "model"),
            "base": {"config": "digits", "overrides": [*BASE, f"storage.root={tmp_path / 'runs'}", "eval.features=rff"]},
            "space": {"sample.cfg_scale": {"choices": [1.0, 3.0]}},
            "objective": [{"metric": "energy/steps_1"}, {"metric": "energy/steps_2"}],
            "sampler": {"name": "grid"}, "trials": 2, **changes}


def test_a_sweep_of_a_trained_model_searches_sampling_keys_only(tmp_path):
    with pytest.raises(ConfigError, match=r"^space.imm.group_size: a sweep of a trained model .* searches only sample.\*, "
                                          r"eval.\* keys"):
        sweep_from_dict(spec(tmp_path, space={"imm.group_size": {"choices": [2, 4]}}))
    with pytest.raises(ConfigError, match=r"^pruner.name: 'asha' prunes training"):
        sweep_from_dict(spec(tmp_path, pruner={"name": "asha"}))
    sweep = load_sweep("sweeps/imagenet256_cfg.yaml")  # the shipped one
    assert sweep.spec.model and sweep.base.trainer.num_workers == 1 and sweep.metrics[1] == "fid/steps_2"


@pytest.mark.slow
def test_each_trial_evaluates_the_model_with_its_guidance_scale(ray_local, mlflow_uri, tmp_path, capsys):
    from imm.train import train

    train(load_config("digits", [*BASE, "train.steps=60", "train.checkpoint_every=60", "eval.every=60",
                                 f"train.out_dir={tmp_path / 'model'}"]))
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path)))
    capsys.readouterr()
    assert cli.main(["sweep", str(path), "--tracking-uri", mlflow_uri, "--experiment", "eval-sweep"]) == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count(f"evaluating {tmp_path / 'model'}") == 2 and "trials: 0 of 2 done" in out
    mlc = tracking.client(mlflow_uri)
    exp = mlc.get_experiment_by_name("eval-sweep")
    trials = [r for r in mlc.search_runs([exp.experiment_id]) if r.data.tags.get("imm.sweep.role") == "trial"]
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    by_scale = {r.data.params["sample.cfg_scale"]: r.data for r in trials}
    assert set(by_scale) == {"1", "3"}
    for data in by_scale.values():
        assert {"energy/steps_1", "energy/steps_2"} <= set(data.metrics) and "train/loss" not in data.metrics
        assert {"fd/steps_1", "fd/steps_2"} <= set(data.metrics)  # the sweep's eval.features, not the model's none
        assert data.tags["imm.eval.model_uri"] == str(tmp_path / "model")
    # guidance changed the samples: the same seeds at another scale give another score
    assert by_scale["1"].metrics["energy/steps_1"] != by_scale["3"].metrics["energy/steps_1"]
    assert not (tmp_path / "runs" / "ray").exists() or not any((tmp_path / "runs" / "ray").rglob("checkpoint.pt"))
