"""MeanFlow: the identity's JVP target, its flow-matching limit, and unbiasedness on Gaussian data where
the average velocity has a closed form."""

import math

import pytest
import torch

from imm.config import load_config
from imm.maths.trajectories import get_trajectory
from imm.methods import build_loss, build_model
from imm.methods.meanflow import AverageVelocityModel, MeanFlowConfig, MeanFlowLoss
from imm.networks.mlp import MLP
from imm.sampling import generate


def _model(seed=0) -> AverageVelocityModel:
    torch.manual_seed(seed)
    return AverageVelocityModel(MLP(3, hidden=32, depth=2, emb_dim=16), get_trajectory("ot_fm"), sigma_d=0.7).double()


def test_the_jvp_target_is_the_total_time_derivative_along_the_flow(monkeypatch):
    """d/dt u(z + (tau - t) v, r, tau) at tau = t by central differences (float64, random weights) = the JVP."""
    import imm.networks.mlp as mlp

    def embedding64(c_noise, dim, max_period=10000.0):  # the network's time features, in float64 for the differences
        freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
        args = c_noise.double()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    monkeypatch.setattr(mlp, "sinusoidal_embedding", embedding64)
    model, loss = _model(), MeanFlowLoss(MeanFlowConfig(), T=0.994)
    g = torch.Generator().manual_seed(1)
    z, v = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.8 + 0.1
    r = t * torch.rand(16, generator=g, dtype=torch.float64)
    h = 1e-6  # the time features oscillate at up to 1000 t: the differences' error is ~ 1000^3 h^2 / 6
    with torch.no_grad():
        fd = (model(z + h * v, r, t + h) - model(z - h * v, r, t - h)) / (2 * h)
    target = loss.target(model, z, v, r, t)
    assert torch.allclose(target, v - (t - r)[:, None] * fd, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fd, torch.zeros_like(fd))  # the derivative is not trivially zero
    same = loss.target(model, z, v, t, t)  # r = t: the target is the conditional velocity (flow matching)
    assert torch.equal(same, v)


def _gaussian_u(z, r, t, a, s):
    """The exact average velocity for data N(0, a^2 I) and noise N(0, s^2 I): z_r = (std_r / std_t) z_t."""
    std = lambda u: ((1 - u) ** 2 * a**2 + u**2 * s**2).sqrt()  # noqa: E731
    return z * (1 - std(r) / std(t))[:, None] / (t - r)[:, None]


def test_on_gaussian_data_the_exact_average_velocity_is_the_fixed_point_of_the_identity():
    """With u the closed form, E[u_tgt | z] = u: the error u - u_tgt averages to zero (its gradient too), while a
    wrong u (scaled by 1.1) leaves a clear bias."""
    a, s, n = 0.8, 0.7, 400_000
    g = torch.Generator().manual_seed(0)
    t = torch.full((n,), 0.7, dtype=torch.float64)
    r = torch.full((n,), 0.3, dtype=torch.float64)
    x = a * torch.randn(n, 2, generator=g, dtype=torch.float64)
    eps = s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    z, v = 0.3 * x + 0.7 * eps, eps - x
    for scale, biased in ((1.0, False), (1.1, True)):
        _, dudt = torch.func.jvp(lambda z_, t_, k=scale: k * _gaussian_u(z_, r, t_, a, s), (z, t),
                                 (v, torch.ones_like(t)))
        err = scale * _gaussian_u(z, r, t, a, s) - (v - (t - r)[:, None] * dudt)
        # the gradient of E||u_theta - u_tgt||^2 in the direction d/dtheta u_theta = z: E[err . z]
        grad = (err * z).sum(1).mean() / (err * z).sum(1).std() * n**0.5  # in standard errors
        assert (abs(float(grad)) > 10) == biased, float(grad)


@pytest.mark.parametrize("arch,precision", [("mlp", "fp32"), ("mlp", "bf16"), ("unet", "fp32")])
def test_meanflow_trains_and_samples_in_one_and_several_steps(arch, precision):
    from imm.training.loop import train_loop

    base = ("digits", ["model.arch=unet", "model.channels=8", "model.channel_mult=[1]", "model.num_blocks=1",
                       "model.attn_resolutions=[]", "model.emb_dim=16"]) if arch == "unet" else (
        "toy2d", ["model.hidden=32", "model.depth=2"])
    cfg = load_config(base[0], [*base[1], "method=meanflow", "train.steps=30", "train.batch_size=32",
                                "eval.every=30", "eval.n_samples=64", "eval.steps=[1,2]", "train.log_every=10",
                                "eval.features=none", f"train.precision={precision}"])
    metrics = train_loop(cfg, device="cpu")
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("train/loss", "energy/steps_1", "energy/steps_2"))
    model = build_model(cfg, (2,) if arch == "mlp" else (1, 8, 8), 0.5)
    x = generate(model, cfg, 8, 1, seed=0, data_shape=(2,) if arch == "mlp" else (1, 8, 8))
    assert x.shape[0] == 8 and isinstance(build_loss(cfg), MeanFlowLoss)


def _ddp_worker(rank: int, world: int, port: int, out: str, method: str):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = load_config("toy2d", [f"method={method}", "model.hidden=32", "model.depth=2", "model.dropout=0.1"])
        torch.manual_seed(0)
        model, loss = build_model(cfg, (2,), 1.0), build_loss(cfg)
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)).chunk(world)[rank]
        torch.manual_seed(100 + rank)
        loss(model, x).backward()  # this rank's gradient on its own, no DDP
        local = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        ddp = DistributedDataParallel(model)
        torch.manual_seed(100 + rank)  # the same draws (times, noise, dropout) under DDP
        loss(ddp, x).backward()
        synced = [p.grad.clone() for p in model.parameters()]
        mean = [g.clone() for g in local]
        for g in mean:
            dist.all_reduce(g)
            g /= world
        torch.save({"synced": synced, "mean": mean, "local": local}, f"{out}.{rank}")
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["meanflow", "tvm"])
def test_under_ddp_the_jvp_leaves_gradient_sync_intact(tmp_path, method):
    """2 gloo workers; each rank's DDP gradient is the mean of the ranks' own gradients. MeanFlow's JVP
    runs on the unwrapped module without gradient; TVM's is DDP's one forward, on dual numbers."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "grads"), method), nprocs=2)
    ranks = [torch.load(f"{tmp_path / 'grads'}.{r}", weights_only=True) for r in range(2)]
    for r in ranks:
        for synced, mean in zip(r["synced"], r["mean"], strict=True):
            torch.testing.assert_close(synced, mean, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ranks[0]["local"][0], ranks[1]["local"][0])  # the ranks did differ before the sync


def test_guidance_in_the_target_mixes_the_velocities_as_the_paper_writes_it():
    """v~ = omega v + kappa u(c) + (1 - omega - kappa) u(null) on labelled samples, v on null-labelled ones; and
    a class-conditional model trains with it (the loss reads the guided velocity)."""
    torch.manual_seed(0)
    model = AverageVelocityModel(MLP(3, hidden=16, depth=1, emb_dim=8, num_classes=4), get_trajectory("ot_fm"),
                                 sigma_d=0.7).double()
    loss = MeanFlowLoss(MeanFlowConfig(guidance=2.0, guidance_mix=0.25), T=0.994)
    z, v = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 4, 2, 4, 3])  # 4 = the null label
    got = loss.guided_velocity(model, z, v, t, labels)
    with torch.no_grad():
        u_c, u_null = model(z, t, t, labels), model(z, t, t, torch.full_like(labels, 4))
    want = 2.0 * v + 0.25 * u_c + (1 - 2.0 - 0.25) * u_null
    keep = (labels == 4)[:, None]
    torch.testing.assert_close(got, torch.where(keep, v, want))
    cfg = load_config("digits", ["method=meanflow", "model.class_conditional=true", "meanflow.guidance=2",
                                 "train.steps=3", "train.batch_size=16", "model.hidden=32", "model.depth=1"])
    torch.manual_seed(0)
    m = build_model(cfg, (1, 8, 8), 0.5, num_classes=10)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 11, (16,))
    guided, plain = build_loss(cfg), MeanFlowLoss(MeanFlowConfig(), T=build_loss(cfg).T)
    torch.manual_seed(1)
    lg = guided(m, x, y)
    torch.manual_seed(1)
    assert torch.isfinite(lg) and float(lg) != float(plain(m, x, y))


def test_the_time_scale_lives_in_the_weights_and_older_weights_mean_edm_s_1000():
    """A model built with time_scale 1 feeds the network (t, r) unscaled; weights saved before the key existed (no
    time_scale entry) load as 1000, the scale they were trained with, and give the outputs they gave then."""
    new, old = _model(), _model()
    old.time_scale.fill_(1000.0)
    z, r, t = torch.randn(4, 3, dtype=torch.float64), torch.full((4,), 0.2, dtype=torch.float64), torch.full(
        (4,), 0.6, dtype=torch.float64)
    seen = {}
    hook = new.net.register_forward_hook(lambda m, args, out: seen.setdefault("t", args[1]))
    new(z, r, t)
    hook.remove()
    assert torch.allclose(seen["t"], t) and float(new.time_scale) == 1.0
    legacy = {k: v for k, v in old.state_dict().items() if k != "time_scale"}  # as saved before the key
    reloaded = _model()
    reloaded.load_state_dict(legacy)
    assert float(reloaded.time_scale) == 1000.0
    assert torch.equal(reloaded(z, r, t), old(z, r, t)) and not torch.allclose(new(z, r, t), old(z, r, t))


def test_under_bf16_autocast_the_jvp_runs_in_fp32():
    """jvp_fp32 (the default, the official code's): the target under bf16 autocast is the fp32 target exactly; with
    it off the JVP runs in bf16 and differs."""
    torch.manual_seed(0)
    model = AverageVelocityModel(MLP(3, hidden=32, depth=2, emb_dim=16), get_trajectory("ot_fm"), sigma_d=0.7)
    g = torch.Generator().manual_seed(1)
    z, v = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g)
    t = torch.rand(64, generator=g) * 0.8 + 0.1
    r = t * torch.rand(64, generator=g)
    fp32 = MeanFlowLoss(MeanFlowConfig(), T=0.994).target(model, z, v, r, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept = MeanFlowLoss(MeanFlowConfig(), T=0.994).target(model, z, v, r, t)
        low = MeanFlowLoss(MeanFlowConfig(jvp_fp32=False), T=0.994).target(model, z, v, r, t)
    assert kept.dtype == torch.float32 and torch.equal(kept, fp32)
    assert not torch.allclose(low.float(), fp32, atol=1e-3)


def _adaptive_fixed_point(targets: torch.Tensor, p: float, c: float, iters: int = 50) -> torch.Tensor:
    """The u where the adaptively weighted loss's gradient E[sg(w) (u - Y)] vanishes, w = 1 / (||u - Y||^2 + c)^p:
    u = E[w Y] / E[w], iterated from the mean."""
    u = targets.mean(0)
    for _ in range(iters):
        w = 1 / ((u - targets).square().sum(1) + c) ** p
        u = (w[:, None] * targets).sum(0) / w.sum()
    return u


@pytest.mark.parametrize("dim, biased", [(2, True), (3072, False)])
def test_the_adaptive_weight_learns_the_mean_in_high_dimension_and_a_mode_in_2d(dim, biased):
    """Why the 2D configs train MeanFlow with adaptive_p = 0: the target given z is spread (70% near a, 30% near b,
    plus noise of std 0.5 in every coordinate, as eps is). Its mean is what the MeanFlow identity needs. With p = 1
    the weight favours targets near the current estimate: in 2D the fixed point is pulled to the larger mode; in an
    image's 3072 dimensions every target is about equally far (the noise's squared norm, 768 +- 20, swamps the modes'
    separation), the weights are nearly equal and the fixed point is the mean."""
    g = torch.Generator().manual_seed(0)
    n, a, b = 2000, torch.zeros(dim), torch.zeros(dim)
    a[0], b[0] = 1.0, -1.0
    major = torch.rand(n, generator=g) < 0.7
    noise = 0.5 * torch.randn(n, dim, generator=g)
    targets = torch.where(major[:, None], a, b) + noise
    mean = targets.mean(0)
    for p, c in ((1.0, 1e-3), (0.0, 1e-3)):
        gap = float((_adaptive_fixed_point(targets, p, c) - mean).norm())
        assert (gap > 0.2) == (biased and p == 1.0), (dim, p, gap)


def test_the_imf_tangent_leaves_only_the_conditional_velocitys_noise_in_the_target():
    """meanflow.tangent=model (improved MeanFlow): the JVP runs along the model's own velocity u(z, t, t), so with the
    exact map of Gaussian data u - u_tgt = v(z) - (eps - x) pointwise; along eps - x (MeanFlow's) the JVP adds
    (t - r) grad u . (eps - x - v(z)) to it."""
    from test_tvm import GaussianFlowMap

    a, sd, n = 0.8, 0.7, 512
    g = torch.Generator().manual_seed(0)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.8 + 0.15
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    x = a * torch.randn(n, 2, generator=g, dtype=torch.float64)
    eps = sd * torch.randn(n, 2, generator=g, dtype=torch.float64)
    z, v = (1 - t)[:, None] * x + t[:, None] * eps, eps - x
    model = GaussianFlowMap(a, sd)
    noise = model(z, t, t) - v  # v(z) - (eps - x)
    for tangent, exact in (("model", True), ("data", False)):
        loss = MeanFlowLoss(MeanFlowConfig(tangent=tangent, jvp_fp32=False), T=0.994)
        gap = model(z, r, t) - loss.target(model, z, v, r, t) - noise
        assert (float(gap.abs().max()) < 1e-10) == exact, (tangent, float(gap.abs().max()))
