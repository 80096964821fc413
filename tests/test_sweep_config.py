"""Sweep files: loading, define-by-run sampling with conditions, and every mistake named before anything starts."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from imm.config import ConfigError
from orchestrator.sweep.spec import load_sweep, sweep_from_dict

SWEEPS = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


def spec(**changes):
    base = {
        "name": "t",
        "base": {"config": "toy2d", "overrides": ["train.steps=40"]},
        "space": {
            "imm.group_size": {"choices": [2, 4, 8]},
            "imm.weighting": {"choices": ["sigmoid", "constant"]},
            "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "imm.k": {"low": 8, "high": 14},
            "imm.b": {"low": 2.0, "high": 8.0, "when": {"imm.weighting": "sigmoid"}},
        },
        "objective": "energy/steps_1",
    }
    base.update(changes)
    return base


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_shipped_sweeps_validate(path):
    sweep = load_sweep(path)
    assert sweep.params and sweep.metrics


def test_types_are_inferred_and_conditions_hold_in_every_sampled_trial():
    sweep = sweep_from_dict(spec())
    kinds = {p.key: p.kind for p in sweep.params}
    assert kinds == {"imm.group_size": "categorical", "imm.weighting": "categorical", "train.lr": "float",
                     "imm.k": "int", "imm.b": "float"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        params = sweep.suggest(trial)
        seen.add(params["imm.weighting"])
        assert ("imm.b" in params) == (params["imm.weighting"] == "sigmoid")
        assert params["imm.group_size"] in (2, 4, 8) and 8 <= params["imm.k"] <= 14
        assert isinstance(params["imm.k"], int) and 1e-4 <= params["train.lr"] <= 1e-2
        cfg = sweep.trial_config(params)
        assert cfg.imm.k == params["imm.k"] and cfg.train.lr == params["train.lr"]
        assert cfg.train.steps == 40  # the base overrides stay
        study.tell(trial, 1.0)
    assert seen == {"sigmoid", "constant"}


def test_each_trial_config_is_its_own_and_typed():
    """A trial's config is the plan's without a copy (plan_run(fresh=True)): what a run changes in it (its name, its
    absolute paths) must not reach the base or the next trial's config."""
    from omegaconf import OmegaConf

    from imm.config import RunConfig

    sweep = sweep_from_dict(spec())
    one = sweep.trial_config({"imm.k": 9, "imm.weighting": "constant"})
    one.name, one.data.name, one.imm.b = "t0", "moons", 7.0
    two = sweep.trial_config({"imm.k": 10})
    assert (two.imm.k, two.imm.weighting, two.name, two.data.name) == (10, sweep.base.imm.weighting,
                                                                       sweep.base.name, sweep.base.data.name)
    assert two.imm.b == sweep.base.imm.b and sweep.base.imm.k != 9
    assert OmegaConf.get_type(two) is RunConfig  # typed: a wrong value is still refused by its field
    with pytest.raises(Exception, match="imm.k"):
        two.imm.k = "many"
    with pytest.raises(ConfigError, match=r"^imm\.k"):
        sweep.trial_config({"imm.k": 0})


def test_shorthands_and_base_overrides_from_the_command_line():
    sweep = sweep_from_dict(spec(sampler="random", pruner="median"), base_overrides=["train.steps=7"])
    assert sweep.spec.sampler.name == "random" and sweep.spec.pruner.name == "median"
    assert sweep.metrics == ["energy/steps_1"] and sweep.directions == ["minimize"]
    assert sweep.base.train.steps == 7


def test_resources_become_the_trials_trainer_settings():
    sweep = sweep_from_dict(spec(resources={"workers": 2, "cpus_per_worker": 2}))
    assert sweep.base.trainer.num_workers == 2 and sweep.base.trainer.cpus_per_worker == 2.0
    assert not sweep.base.trainer.use_gpu


def test_the_points_of_a_grid_are_every_combination():
    sweep = sweep_from_dict(spec(sampler="grid", space={"imm.group_size": {"choices": [2, 4]},
                                                        "imm.k": {"low": 8, "high": 12, "step": 2}}))
    assert sweep.points() == [{"imm.group_size": m, "imm.k": k} for m in (2, 4) for k in (8, 10, 12)]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"space": {"imm.kernl": {"choices": ["rbf"]}}},
         "space.imm.kernl: 'imm.kernl' is not a run-config key; did you mean 'imm.kernel'?"),
        ({"space": {"imm": {"choices": [1]}}}, "space.imm: 'imm' is not a run-config key"),
        ({"space": {"imm.kernel": {"choices": ["rbf", "cosine"]}}},
         "space.imm.kernel: the value 'cosine' gives an invalid run: imm.kernel"),
        ({"space": {"imm.group_size": {"choices": [3, 4]}}}, "space.imm.group_size: the value 3 gives an invalid run"),
        ({"space": {"imm.k": {"low": 12, "high": 8}}}, "space.imm.k: need low < high"),
        ({"space": {"train.lr": {"low": 0.0, "high": 1.0, "log": True}}}, "space.train.lr.log: a log range needs low > 0"),
        ({"space": {"imm.k": {"choices": [8], "low": 1, "high": 2}}}, "space.imm.k: give either choices or low/high"),
        ({"space": {"imm.k": {"low": 8}}}, "space.imm.k: give choices"),
        ({"space": {"imm.k": {"choices": [8, 8]}}}, "space.imm.k.choices: [8, 8] has repeated values"),
        ({"space": {"trainer.num_workers": {"choices": [1, 2]}}},
         "space.trainer.num_workers: trainer keys are set by the sweep"),
        ({"space": {"imm.b": {"low": 1.0, "high": 2.0, "when": {"imm.weighting": "constant"}}}},
         "space.imm.b.when: imm.weighting='constant' never holds"),
        ({"space": {"imm.b": {"low": 1.0, "high": 2.0, "when": {"imm.weighting": "sigmoid"}},
                    "imm.weighting": {"choices": ["sigmoid", "constant"]}}},
         "space.imm.b.when: 'imm.weighting' is swept after"),
        ({"space": {}}, "space: empty"),
        ({"objective": "energy/steps_3"},
         "objective[0].metric: 'energy/steps_3' is not reported by these runs; choose one of"),
        ({"objective": {"metric": "energy/steps_1", "direction": "down"}}, "objective[0].direction: 'down' is not one of"),
        ({"objective": ["energy/steps_1"]}, ""),  # a list of strings is not a list of objectives: OmegaConf names it
        ({"sampler": "bayes"}, "sampler.name: 'bayes' is not one of ['tpe', 'gp', 'cmaes', 'random', 'grid']"),
        ({"sampler": "cmaes"}, "sampler.name: cmaes searches unconditional int/float ranges only"),
        ({"sampler": "grid"}, "sampler.name: grid needs finite keys; give space.train.lr choices or a step"),
        ({"sampler": "grid", "space": {"imm.weighting": {"choices": ["sigmoid", "constant"]},
                                       "imm.b": {"choices": [2.0, 5.0], "when": {"imm.weighting": "sigmoid"}}}},
         "sampler.name: grid cannot search conditional keys (space.imm.b.when)"),
        ({"pruner": "early"}, "pruner.name: 'early' is not one of ['none', 'asha', 'hyperband', 'median']"),
        ({"pruner": "asha", "objective": [{"metric": "energy/steps_1"}, {"metric": "energy/steps_2"}]},
         "pruner.name: 'asha' needs a single objective"),
        ({"trials": 0}, "trials: 0 is out of range"),
        ({"name": "a b"}, "name: 'a b' must be"),
        ({"base": {"config": "toy2d", "overrides": ["imm.bogus=1"]}}, "base: imm.bogus"),
        ({"base": {"config": "nope"}}, "base: config file 'nope' not found"),
        ({"enqueue": [{"imm.group_size": 16}]}, "enqueue[0].imm.group_size: 16 is outside imm.group_size: one of [2, 4, 8]"),
        ({"enqueue": [{"imm.kernel": "rbf"}]}, "enqueue[0]: 'imm.kernel' is not a swept key"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_mistakes_are_named(changes, message):
    with pytest.raises(ConfigError) as err:
        sweep_from_dict(spec(**changes))
    assert message in str(err.value)


def test_missing_sweep_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="sweep file 'nope.yaml' not found"):
        load_sweep("nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="a sweep file is a mapping"):
        load_sweep(bad)
