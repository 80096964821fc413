"""Terminal Velocity Matching: the JVP in the end time s, the terminal-velocity condition on Gaussian data
where the flow map is known in closed form, the time sampler, guidance as TVM trains it, and a short run."""

import math

import pytest
import torch
from torch import nn

from imm.config import load_config
from imm.maths.trajectories import get_trajectory
from imm.methods.meanflow import AverageVelocityModel
from imm.methods.tvm import TVMConfig, TVMLoss
from imm.networks.mlp import MLP


class GaussianFlowMap(nn.Module):
    """The exact average velocity for data N(0, a^2 I) and noise N(0, sd^2 I) on z_t = (1 - t) x + t eps: the flow
    map is z_s = (std_s / std_t) z_t, so u(z, s, t) = z (1 - std_s / std_t) / (t - s), and at s = t the velocity
    v(z, t) = z std'(t) / std(t). `scale` makes it wrong by a factor."""

    def __init__(self, a: float, sd: float, scale: float = 1.0):
        super().__init__()
        self.a, self.sigma_d, self.scale = a, sd, scale

    def std(self, u):
        return ((1 - u) ** 2 * self.a**2 + u**2 * self.sigma_d**2).sqrt()

    def forward(self, z, s, t, labels=None):
        d_std = -(1 - t) * self.a**2 + t * self.sigma_d**2  # std * std'
        gap = t - s
        safe = torch.where(gap.abs() > 1e-9, gap, torch.ones_like(gap))
        u = torch.where(gap.abs() > 1e-9, (1 - self.std(s) / self.std(t)) / safe, d_std / self.std(t) ** 2)
        return self.scale * z * u[:, None]


def test_the_exact_flow_map_meets_the_terminal_velocity_condition_and_a_wrong_one_does_not():
    """d/ds f(z_t, t, s) = v(f, s) pointwise for the closed-form map (error ~ 0 in float64); scaled by 1.1 it fails."""
    g = torch.Generator().manual_seed(0)
    n = 256
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.1
    s = t * torch.rand(n, generator=g, dtype=torch.float64)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    for scale, wrong in ((1.0, False), (1.1, True)):
        model = GaussianFlowMap(0.8, 0.7, scale)
        u, du_ds = TVMLoss.velocity_and_jvp(model, z, s, t, torch.ones_like(s))
        err = TVMLoss(TVMConfig(), T=1.0).terminal_error(model, z, s, t, u, du_ds)
        assert (float(err.max()) > 1e-4) == wrong, float(err.max())
        if not wrong:
            assert float(err.max()) < 1e-20
    # d/ds f by central differences of f(s) = z - (t - s) u(z, s, t) matches u - (t - s) d_s u
    model, h = GaussianFlowMap(0.8, 0.7), 1e-6
    f = lambda s_: z - (t - s_)[:, None] * model(z, s_, t)  # noqa: E731
    u, du_ds = TVMLoss.velocity_and_jvp(model, z, s, t, torch.ones_like(s))
    assert torch.allclose((f(s + h) - f(s - h)) / (2 * h), u - (t - s)[:, None] * du_ds, atol=1e-7)


def test_the_jvp_is_the_derivative_in_s_of_the_network_and_carries_a_gradient(monkeypatch):
    import imm.networks.mlp as mlp

    def embedding64(c_noise, dim, max_period=10000.0):
        freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
        args = c_noise.double()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    monkeypatch.setattr(mlp, "sinusoidal_embedding", embedding64)
    torch.manual_seed(0)
    model = AverageVelocityModel(MLP(3, hidden=32, depth=2, emb_dim=16), get_trajectory("ot_fm"), sigma_d=0.7).double()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 3, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.8 + 0.1
    s = t * torch.rand(8, generator=g, dtype=torch.float64)
    ds = torch.tensor([1.0, 0.0] * 4, dtype=torch.float64)  # the flow-matching half carries no tangent
    u, du_ds = TVMLoss.velocity_and_jvp(model, z, s, t, ds)
    h = 1e-6
    with torch.no_grad():
        fd = (model(z, s + h, t) - model(z, s - h, t)) / (2 * h)
        assert torch.allclose(u, model(z, s, t))
    assert torch.allclose(du_ds, ds[:, None] * fd, atol=1e-6) and float(fd[0].abs().max()) > 1e-4
    du_ds.square().sum().backward()  # the terminal loss trains through the JVP
    assert any(float(p.grad.abs().max()) > 0 for p in model.parameters())


def test_times_follow_the_official_sampler():
    loss = TVMLoss(TVMConfig(), T=0.994)
    torch.manual_seed(0)
    t, s, s_fm = loss.times(200_000, "cpu")
    assert bool(((0 <= s) & (s <= t) & (t <= 0.994 + 1e-6)).all()) and bool(((0 < s_fm) & (s_fm < 0.994)).all())
    gap = (t - s) / 0.994
    # the gap's logit is N(-0.8, 1) wherever t was not clamped at T (the truncation keeps s + gap <= T)
    logit = torch.logit(gap.clamp(1e-6, 1 - 1e-6))
    assert abs(float(logit.mean()) + 0.8) < 0.01 and abs(float(logit.std()) - 1.0) < 0.01
    fm_logit = torch.logit(s_fm / 0.994)
    assert abs(float(fm_logit.mean()) + 0.4) < 0.01 and abs(float(fm_logit.std()) - 1.0) < 0.01


def test_guidance_mixes_the_null_velocity_into_the_labelled_targets_only():
    class Null(nn.Module):
        net = type("N", (), {"num_classes": 3})()

        def forward(self, z, s, t, labels=None):
            return torch.full_like(z, 5.0)  # u(z, s, s | null)

    v = torch.ones(4, 2)
    labels = torch.tensor([0, 3, 2, 3])  # 3 is the null label
    out = TVMLoss(TVMConfig(guidance=2.0), T=1.0).fm_target(Null(), torch.zeros(4, 2), v, torch.rand(4), labels)
    assert out[:, 0].tolist() == [2 * 1 + (1 - 2) * 5, 1, -3, 1]
    assert torch.equal(TVMLoss(TVMConfig(), T=1.0).fm_target(Null(), torch.zeros(4, 2), v, torch.rand(4), labels), v)


@pytest.mark.parametrize("conditional", [False, True])
def test_tvm_trains_and_samples(conditional):
    from imm.methods import build_loss, build_model
    from imm.sampling import generate
    from imm.training.loop import train_loop

    name, over = ("digits", ["model.class_conditional=true", "tvm.guidance=1.5", "model.hidden=32"]) if conditional \
        else ("toy2d", ["model.hidden=32", "model.depth=2"])
    cfg = load_config(name, [*over, "method=tvm", "train.steps=30", "train.batch_size=32", "eval.every=30",
                             "eval.n_samples=64", "eval.steps=[1,2]", "train.log_every=10", "eval.features=none"])
    metrics = train_loop(cfg, device="cpu")
    assert all(math.isfinite(metrics[k]) for k in ("train/loss", "energy/steps_1", "energy/steps_2"))
    shape = (64,) if conditional else (2,)
    model = build_model(cfg, shape, 0.5, 10 if conditional else 0)
    assert generate(model, cfg, 8, 2, seed=0, data_shape=shape).shape == (8, *shape)
    assert isinstance(build_loss(cfg), TVMLoss)


def test_the_end_points_velocity_comes_from_an_ema_of_the_weights_by_default():
    """tvm.target_ema (0.99 by default, the official ema_target_beta): the target starts as the weights, then moves
    a (1 - decay) share toward them after each step; the terminal error's v(f, s) is the target's; 0 keeps the
    online weights; the checkpoint round trip keeps it."""
    torch.manual_seed(0)
    model = AverageVelocityModel(MLP(2, hidden=16, depth=1, emb_dim=8), get_trajectory("ot_fm"), sigma_d=0.5)
    online = TVMLoss(TVMConfig(target_ema=0.0), T=1.0)
    assert online.velocity_model(model) is model and online.state_dict() == {}
    # the official code's target by default: a run config's and the dataclass's
    assert TVMConfig().target_ema == load_config("toy2d", ["method=tvm"]).tvm.target_ema == 0.99
    by_default = TVMLoss(TVMConfig(), T=1.0)
    assert by_default.velocity_model(model) is not model and by_default.state_dict()
    loss = TVMLoss(TVMConfig(target_ema=0.9), T=1.0)
    target = loss.velocity_model(model)
    assert target is not model and target is loss.velocity_model(model)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    loss.after_step(model)
    for p_target, p_old, p_new in zip(target.parameters(), before, model.parameters(), strict=True):
        assert torch.allclose(p_target, 0.9 * p_old + 0.1 * p_new)
    z, s, t = torch.randn(4, 2), torch.full((4,), 0.2), torch.full((4,), 0.7)
    u, du_ds = TVMLoss.velocity_and_jvp(model, z, s, t, torch.ones_like(s))
    with torch.no_grad():
        f = z - (t - s)[:, None] * u
        want = (u - (t - s)[:, None] * du_ds - target(f, s, s)).square().mean(1)
    assert torch.allclose(loss.terminal_error(model, z, s, t, u, du_ds), want)
    assert not torch.allclose(online.terminal_error(model, z, s, t, u, du_ds), want)
    resumed = TVMLoss(TVMConfig(target_ema=0.9), T=1.0)
    resumed.load_state_dict(loss.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(resumed.velocity_model(model).parameters(), target.parameters(),
                                                  strict=True))


def test_the_loss_is_the_terminal_error_plus_flow_matching_at_the_drawn_times():
    """The whole loss against its two terms written out at the same draws (times, then noise): the terminal error
    through the JVP at (z_t, s, t) and flow matching's squared error at (z_s', s', s'), in value and in gradient.
    (The flow-matching half runs as a plain forward, not on dual numbers with a zero tangent: the same loss, cheaper.)"""
    torch.manual_seed(0)
    model = AverageVelocityModel(MLP(2, hidden=16, depth=1, emb_dim=8), get_trajectory("ot_fm"), sigma_d=0.5).double()
    loss = TVMLoss(TVMConfig(), T=1.0)
    x = torch.randn(16, 2, dtype=torch.float64)
    torch.manual_seed(1)
    got = loss(model, x)
    grads = torch.autograd.grad(got, list(model.parameters()))
    torch.manual_seed(1)
    t, s, s_fm = loss.times(16, x.device)
    eps = torch.randn_like(x) * 0.5
    z_t, z_fm = (1 - t[:, None]) * x + t[:, None] * eps, (1 - s_fm[:, None]) * x + s_fm[:, None] * eps
    u, du_ds = TVMLoss.velocity_and_jvp(model, z_t, s, t, torch.ones_like(s))
    with torch.no_grad():
        v_end = model(z_t - (t - s)[:, None] * u, s, s)
    want = ((u - (t - s)[:, None] * du_ds - v_end).square().mean(1)
            + (model(z_fm, s_fm, s_fm) - (eps - x)).square().mean(1)).mean()
    assert torch.allclose(got, want, rtol=1e-12)
    for a, b in zip(grads, torch.autograd.grad(want, list(model.parameters())), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
