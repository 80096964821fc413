"""The baselines behind `method=`: DDPM with ancestral and DDIM sampling, the consistency-model case of IMM,
the VAE, and classifier-free guidance. Checked against closed forms: an oracle noise predictor that DDIM and
ancestral sampling must follow exactly, L_simple at the Gaussian optimum, the DDPM posterior's variance, the
ELBO of a zeroed VAE, and guidance as an exact linear combination."""

from __future__ import annotations

import math

import pytest
import torch

from imm.config import load_config
from imm.methods import build_loss, build_model
from imm.methods.ddpm import DDPMLoss, EpsModel, linear_alpha_bars, timestep_grid
from imm.methods.vae import VAE
from imm.sampling import generate
from imm.sampling.denoising import ancestral, ddim, ddim_sigma


class Oracle(torch.nn.Module):
    """eps(x_n, n) for data that is exactly `x0` (in unit-std units), or for N(0, I) data when x0 is None."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.num_classes = 0

    def forward(self, x_n, c_t, c_s):
        abar = self.abars[c_t.long()].view(-1, *([1] * (x_n.ndim - 1))).to(x_n.dtype)
        if self.x0 is None:  # Gaussian data: E[eps | x_n] = sqrt(1 - abar) x_n
            return (1 - abar).sqrt() * x_n
        return (x_n - abar.sqrt() * self.x0) / (1 - abar).sqrt()


def oracle_model(x0=None, sigma_d=1.0, steps=1000):
    abars = linear_alpha_bars(steps)
    net = Oracle(x0)
    net.abars = abars
    return EpsModel(net, abars, sigma_d)


def test_alpha_bars_follow_the_linear_betas():
    a = linear_alpha_bars(1000)
    assert a[0].item() == pytest.approx(1 - 1e-4)
    assert a[1].item() == pytest.approx((1 - 1e-4) * (1 - (1e-4 + (0.02 - 1e-4) / 999)))
    assert bool((a[1:] < a[:-1]).all()) and a[-1].item() == pytest.approx(4.04e-5, rel=0.02)


def test_timestep_grid_is_an_even_subsequence_ending_clean():
    assert timestep_grid(1, 1000).tolist() == [999, -1]
    assert timestep_grid(4, 1000).tolist() == [999, 666, 333, 0, -1]
    with pytest.raises(ValueError, match="steps must be in 1..1000"):
        timestep_grid(1001, 1000)


def test_ddim_sigma_at_eta_one_is_the_ddpm_posterior_std():
    a = linear_alpha_bars(1000).double()
    betas = 1 - a[1:] / a[:-1]
    posterior_var = (1 - a[:-1]) / (1 - a[1:]) * betas  # beta~_n of Ho et al. eq. 7
    sig = ddim_sigma(a[1:], a[:-1], 1.0)
    assert torch.allclose(sig**2, posterior_var, rtol=1e-9)
    assert float(ddim_sigma(a[5], a[2], 0.0)) == 0.0


@pytest.mark.parametrize("sampler", [ddim, ancestral])
@pytest.mark.parametrize("steps", [1, 3, 50])
def test_samplers_with_the_exact_noise_land_on_the_data_point(sampler, steps):
    x0 = torch.tensor([[0.7, -1.3, 0.2]]).repeat(16, 1)
    model = oracle_model(x0, sigma_d=2.0)
    g = torch.Generator().manual_seed(0)
    x = sampler(model, torch.randn(16, 3, generator=g), timestep_grid(steps, 1000), generator=g)
    assert torch.allclose(x, 2.0 * x0, atol=1e-4)  # back in data units (sigma_d = 2)


@pytest.mark.parametrize("sampler", [ddim, ancestral])
def test_the_full_chain_with_the_gaussian_optimum_keeps_the_gaussian(sampler):
    model = oracle_model(None, sigma_d=1.5)
    g = torch.Generator().manual_seed(1)
    x = sampler(model, torch.randn(20000, 2, generator=g), timestep_grid(1000, 1000), generator=g)
    assert x.mean(0).abs().max() < 0.05 and torch.allclose(x.std(0), torch.full((2,), 1.5), rtol=0.03)


def test_a_coarse_ddim_step_with_the_gaussian_optimum_is_the_closed_form():
    # With E[x0 | x_n] = sqrt(a_n) x_n and E[eps | x_n] = sqrt(1 - a_n) x_n, one deterministic step from n to m is
    # x_m = (sqrt(a_m a_n) + sqrt((1 - a_m)(1 - a_n))) x_n: a cosine of the angle between the two noise levels,
    # so coarse DDIM shrinks a Gaussian (the probability-flow ODE is exact only as the steps shrink).
    model = oracle_model(None)
    a = model.alpha_bars.double()
    x = torch.randn(5, 2)
    out = ddim(model, x, torch.tensor([900, 300]))
    factor = (a[300] * a[900]).sqrt() + ((1 - a[300]) * (1 - a[900])).sqrt()
    assert torch.allclose(out.double(), factor * x.double(), atol=1e-5)


def test_l_simple_at_the_gaussian_optimum_is_the_mean_alpha_bar():
    torch.manual_seed(0)
    model = oracle_model(None, sigma_d=3.0)
    x = 3.0 * torch.randn(200000, 1)
    loss = DDPMLoss()(model, x)
    assert loss.item() == pytest.approx(model.alpha_bars.mean().item(), rel=0.02)  # E||eps - E[eps|x_n]||^2 = abar


def test_the_consistency_model_case_is_imm_with_one_particle_the_energy_kernel_and_s_at_eps():
    cfg = load_config("toy2d", ["method=cm", "eps_t=0.002", "imm.group_size=8", "imm.kernel=rbf"])
    loss = build_loss(cfg)
    assert (loss.group_size, loss.c.kernel, loss.s_at_eps) == (1, "energy", True)
    batch = loss.draw(torch.randn(64, 2), torch.tensor(1.0))
    assert batch.s.shape == (64,) and bool((batch.s == 0.002).all()) and bool((batch.t >= batch.r).all())
    model = build_model(cfg, (2,), 1.0)
    assert torch.isfinite(loss.objective(model, batch))


def test_vae_loss_is_the_negative_elbo_per_dimension():
    torch.manual_seed(0)
    vae = VAE((1, 4, 4), latent_dim=3, hidden=8, depth=1, sigma_d=2.0)
    for head in (vae.encoder[-1], vae.decoder[-1]):  # mu = 0, log var = 0 (KL = 0), decoder mean = 0
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    x = torch.randn(32, 1, 4, 4)
    s = math.exp(vae.log_scale.item())
    expected = ((x / 2.0).flatten(1).square().sum(1).mean() / (2 * s * s) + 16 * math.log(s)) / 16
    assert vae(x).item() == pytest.approx(expected.item(), rel=1e-6)


def test_vae_kl_term_is_the_closed_form():
    vae = VAE((2,), latent_dim=2, hidden=4, depth=1)
    torch.nn.init.zeros_(vae.encoder[-1].weight)
    with torch.no_grad():
        vae.encoder[-1].bias.copy_(torch.tensor([0.5, -1.0, math.log(0.25), 0.0]))  # mu, log var
        torch.nn.init.zeros_(vae.decoder[-1].weight)
        torch.nn.init.zeros_(vae.decoder[-1].bias)
    x = torch.zeros(4, 2)
    kl = 0.5 * (0.25 + 1.0 + 0.25 + 1 - 2 - math.log(0.25))
    recon_at_zero = 2 * vae.log_scale.item()  # the decoder predicts 0 = x whatever z is
    assert vae(x).item() == pytest.approx((recon_at_zero + kl) / 2, rel=1e-6)


@pytest.mark.parametrize("method", ["imm", "cm", "fm", "ddpm", "vae"])
def test_every_method_trains_a_step_and_samples_images(method):
    cfg = load_config("toy2d", [f"method={method}", "data.name=digits", "model.hidden=32", "model.depth=1",
                                "imm.group_size=4", "eval.steps=[1,2]"])
    torch.manual_seed(0)
    model = build_model(cfg, (1, 8, 8), 0.5)
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    loss = build_loss(cfg)(model, x)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    out = generate(model, cfg, 10, 2, seed=3, data_shape=(1, 8, 8))
    assert out.shape == (10, 1, 8, 8) and torch.isfinite(out).all()
    assert torch.equal(out, generate(model, cfg, 10, 2, seed=3, data_shape=(1, 8, 8)))  # seeded


@pytest.mark.parametrize("method", ["imm", "fm", "ddpm"])
def test_guidance_is_the_linear_combination_on_the_network_output(method):
    cfg = load_config("toy2d", [f"method={method}", "model.hidden=16", "model.depth=1", "model.class_conditional=true"])
    torch.manual_seed(0)
    model = build_model(cfg, (2,), 1.0, num_classes=3).eval()
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    times = (torch.full((6,), 0.3), torch.full((6,), 0.8)) if method == "imm" else (
        (torch.full((6,), 0.8),) if method == "fm" else (torch.full((6,), 500),))
    null = torch.full_like(y, 3)
    cond, uncond = model(x, *times, labels=y), model(x, *times, labels=null)
    assert not torch.allclose(cond, uncond)
    assert torch.allclose(model(x, *times, labels=y, cfg_scale=1.0), cond)
    assert torch.allclose(model(x, *times, labels=y, cfg_scale=0.0), uncond, atol=1e-6)
    w = 1.5
    guided = model(x, *times, labels=y, cfg_scale=w)
    if method == "imm":  # f is affine in G: the same combination holds for f
        assert torch.allclose(guided, uncond + w * (cond - uncond), atol=1e-5)
        t = times[1]
        assert torch.allclose(model(x, t, t, labels=y, cfg_scale=w), x, atol=1e-6)  # f_{t,t} = x_t still
    else:
        assert torch.allclose(guided, uncond + w * (cond - uncond), atol=1e-5)
    assert torch.allclose(model(x, *times), model(x, *times, labels=null))  # no labels = the null label


def test_clipping_the_clean_prediction_bounds_the_samples_and_leaves_in_range_data_alone():
    x0 = torch.tensor([[0.5, -0.25]]).repeat(8, 1)  # data units, sigma_d = 1
    exact = oracle_model(x0)
    exact.clip_x0 = 1.0
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(ddim(exact, torch.randn(8, 2, generator=g), timestep_grid(4, 1000)), x0, atol=1e-4)
    far = oracle_model(torch.full((8, 2), 3.0))  # a predictor pointing outside the data range
    far.clip_x0 = 1.0
    out = ddim(far, torch.randn(8, 2, generator=g), timestep_grid(4, 1000))
    assert torch.allclose(out, torch.ones(8, 2), atol=1e-4)
