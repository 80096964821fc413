"""Interpolant identities and the DDIM interpolant (notes sections 1-2)."""

import math

import pytest
import torch

from imm.maths.trajectories import ddim, get_trajectory

TRAJ = ["ot_fm", "cosine"]


@pytest.mark.parametrize("name", TRAJ)
def test_boundaries_and_eta(name):
    tr = get_trajectory(name)
    z, o = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    assert tr.alpha(z) == 1 and tr.sigma(z) == 0
    assert abs(tr.alpha(o)) < 1e-12 and tr.sigma(o) == 1
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(tr.eta(t), tr.sigma(t) / tr.alpha(t))
    torch.testing.assert_close(tr.eta_inv(tr.eta(t)), t)
    torch.testing.assert_close(tr.log_snr(t), torch.log(tr.alpha(t) ** 2 / tr.sigma(t) ** 2))


@pytest.mark.parametrize("name", TRAJ)
def test_neg_dlog_snr_dt_matches_autograd(name):
    tr = get_trajectory(name)
    t = torch.linspace(0.02, 0.98, 30, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(tr.log_snr(t).sum(), t)
    torch.testing.assert_close(tr.neg_dlog_snr_dt(t.detach()), -grad)


def test_closed_forms():
    assert math.isclose(float(get_trajectory("ot_fm").eta(torch.tensor(0.994, dtype=torch.float64))), 165.666, rel_tol=1e-4)
    assert math.isclose(float(get_trajectory("cosine").alpha(torch.tensor(0.5))), math.sqrt(0.5), rel_tol=1e-6)
    t = torch.tensor(0.25, dtype=torch.float64)
    assert math.isclose(float(get_trajectory("ot_fm").neg_dlog_snr_dt(t)), 2 / (0.25 * 0.75))


def test_unknown_trajectory_names_choices():
    with pytest.raises(ValueError, match="cosine"):
        get_trajectory("vp")


@pytest.mark.parametrize("name", TRAJ)
def test_ddim_boundaries_and_self_consistency(name):
    tr = get_trajectory(name)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = torch.rand(64, 1, generator=g, dtype=torch.float64) * 0.9 + 0.05
    r = t * torch.rand(64, 1, generator=g, dtype=torch.float64)
    s = r * torch.rand(64, 1, generator=g, dtype=torch.float64)
    x_t = tr.alpha(t) * x + tr.sigma(t) * eps
    torch.testing.assert_close(ddim(x_t, x, t, t, tr), x_t)  # s = t: identity
    torch.testing.assert_close(ddim(x_t, x, torch.zeros_like(t), t, tr), x)  # s = 0: the clean sample
    # Self-consistency: DDIM(DDIM(x_t, x, r, t), x, s, r) = DDIM(x_t, x, s, t).
    torch.testing.assert_close(ddim(ddim(x_t, x, r, t, tr), x, s, r, tr), ddim(x_t, x, s, t, tr))
    # Along the true interpolant it lands on the same noise: x_s = alpha_s x + sigma_s eps.
    torch.testing.assert_close(ddim(x_t, x, s, t, tr), tr.alpha(s) * x + tr.sigma(s) * eps)


def test_ddim_argument_order_is_s_then_t():
    tr = get_trajectory("ot_fm")
    x, x_t = torch.tensor([1.0]), torch.tensor([3.0])
    s, t = torch.tensor([0.2]), torch.tensor([0.8])
    # (alpha_s - sigma_s/sigma_t alpha_t) x + sigma_s/sigma_t x_t = (0.8 - 0.25*0.2) + 0.25*3
    torch.testing.assert_close(ddim(x_t, x, s, t, tr), torch.tensor([0.75 + 0.75]))
