"""The one-step model f_{s,t}: boundary f_{t,t} = x_t, the parameterisations' closed forms, kernel scale."""

import copy
import math

import pytest
import torch

from imm.maths.trajectories import ddim, get_trajectory
from imm.maths.weighting import Weighting
from imm.methods.imm import IMMBatch, IMMConfig, IMMLoss
from imm.networks import PARAMETERIZATIONS, OneStepModel, VelocityModel
from imm.networks.mlp import MLP


def _random_model(param, traj="ot_fm", s_embedding="identity", dropout=0.0, seed=0):
    torch.manual_seed(seed)
    net = MLP(3, hidden=32, depth=2, emb_dim=16, dropout=dropout)
    with torch.no_grad():  # no zero-initialised layer may hide a wrong coefficient
        for p in net.parameters():
            p.normal_(0, 0.5)
    return OneStepModel(net, get_trajectory(traj), param, sigma_d=0.7, s_embedding=s_embedding).double()


def _times(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)
    return t * torch.rand(n, generator=g, dtype=torch.float64), t


@pytest.mark.parametrize("param", ["identity", "simple_edm", "euler_fm"])
@pytest.mark.parametrize("traj", ["ot_fm", "cosine"])
@pytest.mark.parametrize("s_embedding", ["identity", "stride"])
def test_f_tt_is_identity(param, traj, s_embedding):
    model = _random_model(param, traj, s_embedding)
    x = torch.randn(16, 3, dtype=torch.float64)
    _, t = _times()
    assert model.network_output(x, t, t).abs().mean() > 0.1  # the network itself is far from zero
    torch.testing.assert_close(model(x, t, t), x, rtol=0, atol=1e-12)


def test_parameterisations_closed_forms():
    s, t = _times()
    x = torch.randn(16, 3, dtype=torch.float64)
    for param in ["identity", "simple_edm", "euler_fm"]:
        model = _random_model(param)
        tr, sd = model.traj, 0.7
        g = model.network_output(x, s, t)
        c = lambda v: v[:, None]  # noqa: E731
        if param == "identity":
            ref = ddim(x, g, c(s), c(t), tr)
        elif param == "euler_fm":
            ref = x - c(t - s) * sd * g
        else:
            a_t, s_t, a_s, s_s = 1 - t, t, 1 - s, s
            norm = a_t**2 + s_t**2
            ref = c((a_t * a_s + s_t * s_s) / norm) * x - c((a_s * s_t - a_t * s_s) * sd / norm.sqrt()) * g
        torch.testing.assert_close(model(x, s, t), ref)


def test_simple_edm_is_exact_for_a_perfect_network():
    """With G = the c_out-scaled residual to the true x_s, f reproduces DDIM along the true interpolant."""
    model = _random_model("simple_edm")
    x0, eps = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    s, t = _times()
    c = lambda v: v[:, None]  # noqa: E731
    x_t, x_s = c(1 - t) * x0 + c(t) * eps, c(1 - s) * x0 + c(s) * eps
    c_skip, c_out = PARAMETERIZATIONS["simple_edm"].coefficients(model.traj, s, t, model.sigma_d)
    g = (x_s - c(c_skip) * x_t) / c(c_out)
    torch.testing.assert_close(model.combine(x_t, g, s, t), x_s)


def test_kernel_scale_is_inverse_abs_c_out():
    s, t = torch.tensor([0.2], dtype=torch.float64), torch.tensor([0.6], dtype=torch.float64)
    sd = 0.7
    edm = _random_model("simple_edm")
    ref = math.sqrt(0.4**2 + 0.6**2) / (abs(0.8 * 0.6 - 0.2 * 0.4) * sd)
    assert math.isclose(float(edm.kernel_scale(s, t)), ref, rel_tol=1e-7)
    # identity: f = DDIM(x_t, G, s, t) = (sigma_s / sigma_t) x_t + (alpha_s - sigma_s alpha_t / sigma_t) G, so
    # w~ = sigma_t / |alpha_s sigma_t - sigma_s alpha_t| = 0.6 / 0.4, with no sigma_d (G is in data units)
    assert math.isclose(float(_random_model("identity").kernel_scale(s, t)), 1.5, rel_tol=1e-7)
    assert math.isclose(float(_random_model("euler_fm").kernel_scale(s, t)), 1 / (0.4 * sd), rel_tol=1e-7)
    # At s = 0, t = 0.1 identity's scale is 1, simple_edm's 18x that
    s0, t1 = torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.1], dtype=torch.float64)
    assert math.isclose(float(_random_model("identity").kernel_scale(s0, t1)), 1.0, rel_tol=1e-7)
    assert math.isclose(float(edm.kernel_scale(s0, t1)), math.sqrt(0.81 + 0.01) / (0.1 * sd), rel_tol=1e-7)


@pytest.mark.parametrize("param", ["simple_edm", "euler_fm", "identity"])
def test_kernel_scale_times_the_outputs_sensitivity_to_G_is_one(param):
    """w~(s, t) |df/dG| = 1 for every parameterisation, df/dG measured by perturbing G (f is affine in G)."""
    model = _random_model(param)
    s, t = torch.tensor([0.0, 0.2, 0.5]), torch.tensor([0.1, 0.6, 0.9])
    s, t = s.double(), t.double()
    x, g, dg = (torch.randn(3, 3, dtype=torch.float64) for _ in range(3))
    dfdg = (model.combine(x, g + dg, s, t) - model.combine(x, g, s, t)) / dg
    torch.testing.assert_close(model.kernel_scale(s, t)[:, None] * dfdg.abs(), torch.ones(3, 3, dtype=torch.float64))


def test_s_embedding_stride_sees_the_gap():
    """stride feeds 1000 (t - s): shifting s and t together changes the identity embedding's input, not stride's."""
    seen = []
    model = _random_model("euler_fm", s_embedding="stride")
    model.net.forward = lambda x, ct, cs: seen.append(cs) or torch.zeros_like(x)
    x = torch.zeros(2, 3, dtype=torch.float64)
    model(x, torch.tensor([0.1, 0.3], dtype=torch.float64), torch.tensor([0.5, 0.7], dtype=torch.float64))
    torch.testing.assert_close(seen[0], torch.tensor([400.0, 400.0], dtype=torch.float64))


def test_velocity_model_is_euler_fm_at_s_equal_t():
    torch.manual_seed(0)
    net = MLP(3, hidden=16, depth=1, emb_dim=8)
    vm = VelocityModel(net, get_trajectory("ot_fm"), sigma_d=0.7).double()
    om = OneStepModel(net, get_trajectory("ot_fm"), "euler_fm", sigma_d=0.7).double()
    x, (_, t) = torch.randn(16, 3, dtype=torch.float64), _times()
    torch.testing.assert_close(vm(x, t), 0.7 * om.network_output(x, t, t))


def _loss(group_size=4, **kw):
    return IMMLoss(get_trajectory("ot_fm"), IMMConfig(group_size=group_size, weighting="sigmoid", k=8, **kw),
                   eps_t=0.0, T=0.994)


def test_gradient_flows_only_through_the_online_branch():
    """The IMM gradient equals the gradient of the loss against a frozen copy of the current weights."""
    model = _random_model("simple_edm")
    loss_fn = _loss()
    x = torch.randn(32, 3, dtype=torch.float64)
    torch.manual_seed(5)
    batch = loss_fn.draw(x, model.sigma_d)
    loss_fn.objective(model, batch).backward()
    got = [p.grad.clone() for p in model.parameters()]

    frozen = copy.deepcopy(model).requires_grad_(False)
    model.zero_grad()
    m = 4
    s_, r_, t_ = (v.repeat_interleave(m) for v in (batch.s, batch.r, batch.t))
    y_t, y_r = model(batch.x_t, s_, t_), frozen(batch.x_r, s_, r_)
    scale = model.kernel_scale(batch.s, batch.t)
    k = lambda a, b: torch.exp(-scale[:, None, None] * torch.cdist(a, b) / 3)  # noqa: E731
    yt, yr = y_t.reshape(8, m, 3), y_r.reshape(8, m, 3)
    per_group = (k(yt, yt) + k(yr, yr) - 2 * k(yt, yr)).mean((-1, -2))
    (Weighting("sigmoid")(batch.t, model.traj) * per_group).mean().backward()
    for a, b in zip(got, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)


def test_target_pass_replays_the_dropout_masks():
    """With x_r = x_t and r = t the two passes see the same input; equal masks make MMD^2 exactly 0."""
    model = _random_model("simple_edm", dropout=0.5).train()
    loss_fn = _loss(kernel="rbf")
    x = torch.randn(16, 3, dtype=torch.float64)
    b = loss_fn.draw(x, model.sigma_d)
    same = IMMBatch(s=b.s, r=b.t, t=b.t, x_t=b.x_t, x_r=b.x_t)
    assert loss_fn.objective(model, same).item() == 0.0
    # ...while two passes with independent masks differ.
    y1, y2 = model(b.x_t, b.s.repeat_interleave(4), b.t.repeat_interleave(4)), model(
        b.x_t, b.s.repeat_interleave(4), b.t.repeat_interleave(4)
    )
    assert not torch.equal(y1, y2)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: the CUDA RNG and inductor's GPU kernels"))])
def test_target_pass_replays_the_dropout_masks_under_torch_compile(device):
    """Inductor draws a compiled graph's dropout from seeds it takes from the device RNG, so rewinding that
    RNG (replay_rng) still gives the target pass the online pass's masks (about 20 s of compilation on CPU)."""
    model = _random_model("simple_edm", dropout=0.5).train().float().to(device)
    compiled = torch.compile(model)
    loss_fn = _loss(kernel="rbf")
    torch.manual_seed(0)
    b = loss_fn.draw(torch.randn(16, 3, device=device), model.sigma_d)
    same = IMMBatch(s=b.s, r=b.t, t=b.t, x_t=b.x_t, x_r=b.x_t)
    assert loss_fn.objective(compiled, same).item() == 0.0
    s, t = b.s.repeat_interleave(4), b.t.repeat_interleave(4)
    assert not torch.equal(compiled(b.x_t, s, t), compiled(b.x_t, s, t))  # without the rewind the masks differ


def test_draw_shares_times_within_groups_and_reuses_noise():
    loss_fn = _loss(group_size=4)
    x = torch.randn(32, 3, dtype=torch.float64)
    torch.manual_seed(0)
    b = loss_fn.draw(x, torch.tensor(0.7, dtype=torch.float64))
    assert b.s.shape == b.t.shape == b.r.shape == (8,)
    tr, t, r = get_trajectory("ot_fm"), b.t.repeat_interleave(4)[:, None], b.r.repeat_interleave(4)[:, None]
    eps = (b.x_t - (1 - t) * x) / t  # the noise used for x_t...
    torch.testing.assert_close(b.x_r, tr.alpha(r) * x + tr.sigma(r) * eps)  # ...is the noise of x_r


@pytest.mark.parametrize("name", ["ot_fm", "cosine"])
def test_a_trajectory_pickled_before_the_subclasses_loads_as_its_subclass(name):
    """Promoted mlflow.pytorch models pickle their model, its Trajectory included; one pickled when Trajectory was a
    single class (its state: name and default_T) unpickles as the subclass its name says, with the same numbers."""
    import pickle

    from imm.maths.trajectories import TRAJECTORIES, Trajectory

    old = object.__new__(Trajectory)
    object.__setattr__(old, "__dict__", {"name": name, "default_T": TRAJECTORIES[name].default_T})
    loaded = pickle.loads(pickle.dumps(old))
    assert type(loaded) is type(TRAJECTORIES[name]) and loaded == TRAJECTORIES[name]
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(loaded.alpha(t), TRAJECTORIES[name].alpha(t))
