"""Our IMM samplers against the official sampling loop, same weights, same noise, same output.

The reference below is the official `generate_images.py` loop (github.com/lumalabs/imm) re-stated from its text,
not from our code: x_T = sigma_d * randn (float32) kept in float64; for each (t_cur, t_next) of a float64 grid the
network sees float32 copies of x, t and s (c_in = 1 / (sigma_d sqrt(alpha_t^2 + sigma_t^2)) and the time inputs
computed from those), its output (guided: F_u + w (F_c - F_u)) goes back to float64, and the parameterisation's
update runs in float64. Restart jumps to eps each step and re-noises with (1 - t) x + t sigma_d randn_like(x).
"""

from __future__ import annotations

import pytest
import torch

from imm.config import load_config
from imm.methods.imm import build_model
from imm.sampling import generate
from imm.sampling.generate import start_from_noise

SIGMA_D = 0.5


def official_forward(net, f_type: str, temb_type: str, x64, t64, s64, labels=None, cfg_scale=1.0):
    """One official cfg_forward + sample function step: x_s from x_t in float64 (ot_fm: alpha = 1 - t, sigma = t)."""
    n = x64.shape[0]
    x, t, s = x64.float(), t64.float().expand(n), s64.float().expand(n)
    c_in = (1 / (SIGMA_D * ((1 - t) ** 2 + t**2).sqrt())).reshape(-1, 1, 1, 1)
    c_t = t * 1000
    c_s = s * 1000 if temb_type == "identity" else (t - s) * 1000
    if labels is None:
        F = net(c_in * x, c_t, c_s)
    else:
        F_c = net(c_in * x, c_t, c_s, labels)
        F_u = net(c_in * x, c_t, c_s, torch.full_like(labels, net.num_classes))
        F = F_u + cfg_scale * (F_c - F_u)
    F = F.double()
    t, s = t64, s64
    if f_type == "euler_fm":
        return x64 - (t - s) * SIGMA_D * F
    assert f_type == "simple_edm"
    a_t, s_t, a_s, s_s = 1 - t, t, 1 - s, s
    norm = a_t**2 + s_t**2
    c_skip = (a_t * a_s + s_t * s_s) / norm
    c_out = -(a_s * s_t - a_t * s_s) * SIGMA_D / norm.sqrt()
    return c_skip * x64 + c_out * F


def official_pushforward(net, f_type, temb_type, latents, grid, labels=None, cfg_scale=1.0):
    x = latents.to(torch.float64)
    for t_cur, t_next in zip(grid[:-1], grid[1:], strict=True):
        x = official_forward(net, f_type, temb_type, x, t_cur, t_next, labels, cfg_scale)
    return x


def official_restart(net, f_type, temb_type, latents, grid, generator, labels=None, cfg_scale=1.0):
    x, eps = latents.to(torch.float64), grid[-1]
    ts = grid[:-1]
    for i, t in enumerate(ts):
        x = official_forward(net, f_type, temb_type, x, t, eps, labels, cfg_scale)
        if i < len(ts) - 1:
            t_next = ts[i + 1]
            x = (1 - t_next) * x + t_next * SIGMA_D * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return x


CASES = {  # the two official settings at test size: CIFAR-10's DDPM++ and ImageNet's class-conditional DiT
    "cifar10": ("cifar10", ["model.channels=32", "model.num_blocks=1", "model.channel_mult=[1,2]"], (3, 16, 16), 0,
                "simple_edm", "identity"),
    "imagenet": ("imagenet256_dit", ["model.dit=S/4"], (4, 16, 16), 10, "euler_fm", "stride"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    config, overrides, shape, classes, f_type, temb = CASES[request.param]
    cfg = load_config(config, [*overrides, "data.name=8gaussians"])
    torch.manual_seed(0)
    model = build_model(cfg, shape, SIGMA_D, classes).eval()
    with torch.no_grad():  # zero-initialised output layers would make every network output 0
        for p in model.parameters():
            if p.ndim and float(p.abs().max()) == 0:
                p.normal_(0, 0.05)
    return cfg, model, shape, classes, f_type, temb


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("sampler", ["pushforward", "restart"])
def test_our_sampler_equals_the_official_loop(case, steps, sampler):
    cfg, model, shape, classes, f_type, temb = case
    n, seed, scale = 6, 7, 1.5 if classes else 1.0
    cfg.sample.cfg_scale = scale
    labels = torch.arange(n) % classes if classes else None
    ours = generate(model, cfg, n, steps, sampler=sampler, seed=seed, data_shape=shape, labels=labels)
    g = torch.Generator().manual_seed(seed)  # the same noise: start_from_noise draws x_T first, from the seed
    latents, grid = start_from_noise(model, cfg, n, steps, shape, g)
    assert grid.dtype == torch.float64
    # x_T = sigma_d randn(shape), float32, as the official get_init_noise
    torch.testing.assert_close(latents, SIGMA_D * torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        if sampler == "pushforward":
            official = official_pushforward(model.net, f_type, temb, latents, grid, labels, scale)
        else:
            official = official_restart(model.net, f_type, temb, latents, grid, g, labels, scale)
    assert float(official.abs().max()) > 0.1
    torch.testing.assert_close(ours.double(), official, rtol=0, atol=1e-5)
