"""Bf16-safe times. Near T the mapping's step from r to t is ~2e-7 (k = 15); does the network's output
still separate G(x_t, s, r) from G(x_t, s, t) under autocast? Measured against fp32 on the paper's networks (DDPM++
for CIFAR-10, DiT for ImageNet latents, at test size) with CPU autocast, which rounds as a GPU's does."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from imm.config import ConfigError, load_config
from imm.maths.mapping import mapping_fn
from imm.methods import build_model
from imm.methods.imm import BF16_DELTA, build_loss

NETS = {
    "ddpmpp": ("cifar10", ["model.channels=32", "model.num_blocks=1", "model.channel_mult=[1,2]", "model.dropout=0"],
               (3, 16, 16)),
    "dit": ("imagenet256_dit", ["model.dit=S/2"], (4, 16, 16)),
}


@pytest.fixture(scope="module", params=sorted(NETS))
def net(request):
    config, overrides, shape = NETS[request.param]
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg, shape, 0.5, 0).eval()
    with torch.no_grad():  # the zero-initialised output layers would make every difference 0
        for p in model.parameters():
            if p.ndim and float(p.abs().max()) == 0:
                p.normal_(0, 0.05)
    return cfg, model, torch.randn(8, *shape) * 0.5


def separation_error(cfg, model, x, dtype, delta: float, t: float = 0.99) -> float:
    """||dG_low - dG_fp32|| / ||dG_fp32||, dG = G(x_t, s, r) - G(x_t, s, t) with r the config's mapping at t."""
    n = x.shape[0]
    tt, s = torch.full((n,), t), torch.full((n,), 0.006)
    r = mapping_fn(s, tt, model.traj, cfg.imm.mapping, cfg.imm.k, delta=delta)
    with torch.no_grad():
        exact = model.network_output(x, s, r) - model.network_output(x, s, tt)
        with torch.autocast("cpu", dtype=dtype):
            low = model.network_output(x, s, r).float() - model.network_output(x, s, tt).float()
    return float((low - exact).norm() / exact.norm())


def test_without_a_floor_bf16_cannot_tell_r_from_t(net):
    assert separation_error(*net, torch.bfloat16, 0.0) > 1.0


def test_the_papers_floor_suffices_for_fp16_but_not_for_bf16(net):
    assert separation_error(*net, torch.float16, 1e-4) < 0.5
    assert separation_error(*net, torch.bfloat16, 1e-4) > 1.0


def test_the_bf16_floor_separates_them(net):
    assert separation_error(*net, torch.bfloat16, BF16_DELTA) < 0.5


def test_away_from_T_the_mapping_step_is_resolved_without_a_floor(net):
    assert separation_error(*net, torch.float16, 0.0, t=0.5) < 0.1


@pytest.mark.parametrize(("overrides", "delta"), [
    (["trainer.use_gpu=true"], BF16_DELTA),  # precision auto on GPU workers = bf16: the floor, unasked
    (["train.precision=bf16"], BF16_DELTA),
    (["trainer.use_gpu=true", "imm.delta=0.003"], 0.003),
    (["trainer.use_gpu=true", "train.precision=fp32", "imm.delta=1e-4"], 1e-4),  # the paper's, in fp32
    ([], 0.0),  # a CPU run in fp32
])
def test_the_floor_follows_the_runs_precision(overrides, delta):
    assert build_loss(load_config("toy2d", overrides)).delta == delta


@pytest.mark.parametrize("method", ["imm", "cm"])
def test_a_smaller_floor_in_bf16_is_refused_in_one_line_naming_imm_delta(method):
    with pytest.raises(ConfigError) as e:
        load_config("toy2d", [f"method={method}", "trainer.use_gpu=true", "imm.delta=1e-4"])
    assert str(e.value).startswith("imm.delta: 0.0001 is below the floor bf16 training needs") and "\n" not in str(e.value)


def test_a_run_on_a_gpu_by_hand_resolves_auto_on_its_device():
    """python -m imm.train on a GPU box (trainer.use_gpu false): train_loop resolves precision=auto on the device,
    and the loss it builds follows (here the device is named, not used: no GPU in CI)."""
    from imm.training.accelerate import resolve_precision

    cfg = resolve_precision(load_config("toy2d"), torch.device("cuda"))
    assert cfg.train.precision == "bf16" and build_loss(cfg).delta == BF16_DELTA
    assert resolve_precision(load_config("toy2d"), torch.device("cpu")).train.precision == "fp32"


def test_a_model_trained_before_the_floor_still_loads_to_sample():
    """A checkpoint written before this rule holds imm.delta 0.0 with precision auto on GPU workers: training with it
    is refused, sampling from it is not (what only training needs is not asked of a stored model)."""
    from imm.config import config_from_dict
    from imm.methods import build_model
    from imm.trained import TrainedModel

    cfg = load_config("toy2d", ["model.hidden=16", "model.depth=1"])
    old = OmegaConf.to_container(cfg, resolve=True)
    old["imm"]["delta"], old["trainer"]["use_gpu"] = 0.0, True
    with pytest.raises(ConfigError, match="^imm.delta: 0.0 is below"):
        config_from_dict(old)
    model = build_model(cfg, (2,), 1.0)
    ckpt = {"config": old, "data_shape": [2], "sigma_d": 1.0, "ema": model.state_dict()}
    assert TrainedModel.from_checkpoint(ckpt).sample(8, steps=2).shape == (8, 2)
