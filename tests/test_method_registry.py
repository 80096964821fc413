"""A method is one module. A toy method registered here (the test is its only file) trains, samples and is
validated through the config, the CLI and a sweep space, with nothing else changed."""

from dataclasses import dataclass

import pytest
import torch

from imm.config import ConfigError, load_config
from imm.maths.trajectories import get_trajectory
from imm.methods import METHODS, Method, register
from imm.methods.common import build_network
from imm.methods.flow_matching import FlowMatchingLoss
from imm.networks import VelocityModel
from imm.sampling import SAMPLERS, Sampler, generate, register_sampler, samplers_for
from imm.sampling.velocity import euler


@dataclass
class ShrunkConfig:
    weight: float = 1.0  # scales the flow-matching loss


@torch.no_grad()
def half_euler(model, x, grid, generator=None, shrink: float = 1.0):
    """Euler on the grid, the result scaled by `shrink` (so a test can see the option arrive)."""
    return euler(model, x, grid, generator) * shrink


def _check(cfg):
    if cfg.shrunk.weight <= 0:
        raise ConfigError(f"shrunk.weight: must be > 0, got {cfg.shrunk.weight}")


SHRUNK = Method(
    "shrunk", "flow matching with a weighted loss (a test method)",
    model_kind="shrunk_velocity", default_sampler="half_euler",
    build_model=lambda cfg, shape, sigma_d, classes=0: VelocityModel(build_network(cfg, shape, classes),
                                                                     get_trajectory("ot_fm"), sigma_d=sigma_d),
    build_loss=lambda cfg: (lambda model, x, labels=None:
                            cfg.shrunk.weight * FlowMatchingLoss(eps_t=0.0, T=0.994)(model, x, labels)),
    section="shrunk", config=ShrunkConfig, check_section=_check,
    sampler_options=lambda cfg, sampler: {"shrink": 0.5} if sampler == "half_euler" else {},
)


@pytest.fixture
def shrunk():
    register(SHRUNK)
    for name, fn in (("half_euler", half_euler), ("euler", euler)):  # the samplers of its model kind
        register_sampler(Sampler(name, "shrunk_velocity", "a test sampler", fn))
    yield SHRUNK
    del METHODS["shrunk"]
    for name in ("half_euler", "euler"):
        del SAMPLERS[("shrunk_velocity", name)]


def test_the_builtin_methods_are_the_table(shrunk):
    assert list(METHODS)[:5] == ["imm", "fm", "ddpm", "cm", "vae"]
    assert samplers_for("imm") == ("pushforward", "restart") and METHODS["ddpm"].section == "ddpm"
    assert samplers_for("cm") == samplers_for("imm") and samplers_for("fmm") == ("mean_steps",)


def test_a_registered_method_is_configured_validated_trained_and_sampled(shrunk, tmp_path):
    from imm.training.loop import train_loop

    overrides = ["method=shrunk", "shrunk.weight=2.0", "model.hidden=32", "model.depth=1", "train.steps=30",
                 "train.batch_size=64", "eval.every=30", "eval.n_samples=100", "eval.steps=[1,4]",
                 "train.log_every=10", "eval.features=none"]
    cfg = load_config("toy2d", overrides)
    assert cfg.shrunk.weight == 2.0
    with pytest.raises(ConfigError, match=r"shrunk\.weight: must be > 0"):
        load_config("toy2d", ["method=shrunk", "shrunk.weight=0"])
    with pytest.raises(ConfigError, match=r"sample\.sampler: 'restart' does not apply to method=shrunk; "
                                          r"choose one of \['half_euler', 'euler'\]"):
        load_config("toy2d", ["method=shrunk", "sample.sampler=restart"])
    with pytest.raises(ConfigError, match="shrunk"):  # its section is closed to unknown keys like any other
        load_config("toy2d", ["shrunk.nonsense=1"])
    metrics = train_loop(cfg, device="cpu")
    assert metrics["step"] == 30 and torch.isfinite(torch.tensor(metrics["energy/steps_4"]))
    model = METHODS["shrunk"].build_model(cfg, (2,), 1.0)
    default = generate(model, cfg, 64, 4, seed=3, data_shape=(2,))  # the method's default sampler
    plain = generate(model, cfg, 64, 4, seed=3, data_shape=(2,), sampler="euler")
    assert torch.allclose(default, 0.5 * plain)  # the method's sampler options reach its sampler


def test_a_registered_method_goes_through_the_cli_and_a_sweep_space(shrunk, capsys, no_ray, tmp_path):
    from orchestrator import cli
    from orchestrator.sweep.spec import sweep_from_dict

    assert cli.main(["train", "toy2d", "method=shrunk", "shrunk.weight=3", "--dry-run",
                     f"storage.root={tmp_path}"]) == 0
    assert "weight: 3" in capsys.readouterr().out
    assert cli.main(["train", "toy2d", "method=shrunk", "shrunk.weight=-1", "--dry-run"]) == 2
    assert "shrunk.weight: must be > 0" in capsys.readouterr().err
    raw = {"name": "m", "base": {"config": "toy2d"}, "objective": "energy/steps_2", "trials": 4,
           "space": {"method": {"choices": ["imm", "shrunk"]},
                     "shrunk.weight": {"low": 0.5, "high": 2.0, "when": {"method": "shrunk"}}}}
    sweep = sweep_from_dict(raw)
    assert [p.key for p in sweep.params] == ["method", "shrunk.weight"]
    raw["space"]["method"]["choices"] = ["imm", "nope"]
    with pytest.raises(ConfigError, match="nope"):
        sweep_from_dict(raw)
