"""r(s, t): s <= r < t, and the decrement is exactly the notes' constant (section 4)."""

import pytest
import torch

from imm.maths.mapping import mapping_fn
from imm.maths.trajectories import get_trajectory


def _times(traj, n=4000, eps_t=0.0, T=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = traj.default_T if T is None else T
    t = eps_t + (T - eps_t) * torch.rand(n, generator=g)
    s = eps_t + (t - eps_t) * torch.rand(n, generator=g)
    return s, t


@pytest.mark.parametrize("traj_name", ["ot_fm", "cosine"])
@pytest.mark.parametrize("kind", ["constant_eta", "constant_t"])
@pytest.mark.parametrize("k", [1, 8, 12, 15, 20])
def test_s_le_r_lt_t(traj_name, kind, k):
    tr = get_trajectory(traj_name)
    s, t = _times(tr, eps_t=0.006)
    r = mapping_fn(s, t, tr, kind, k, eps_t=0.006)
    assert bool((s <= r).all()) and bool((r < t).all())


@pytest.mark.parametrize("traj_name", ["ot_fm", "cosine"])
@pytest.mark.parametrize("k", [6, 10, 15])
def test_constant_eta_decrement(traj_name, k):
    tr = get_trajectory(traj_name)
    s, t = _times(tr)
    s, t = s.double(), t.double()
    r = mapping_fn(s, t, tr, "constant_eta", k)
    free = r > s  # away from the clamp at s
    assert free.sum() > 100
    torch.testing.assert_close(tr.eta(t[free]) - tr.eta(r[free]), torch.full_like(t[free], 160 / 2**k))
    # Where the clamp is active the unclamped r would have fallen below s.
    clamped = ~free
    if clamped.any():
        assert bool((tr.eta(t[clamped]) - 160 / 2**k <= tr.eta(s[clamped]) + 1e-12).all())


@pytest.mark.parametrize("k", [3, 12])
def test_constant_t_decrement(k):
    tr = get_trajectory("ot_fm")
    s, t = _times(tr, eps_t=0.006)
    s, t = s.double(), t.double()
    r = mapping_fn(s, t, tr, "constant_t", k, eps_t=0.006, T=0.994)
    free = r > s
    torch.testing.assert_close(t[free] - r[free], torch.full_like(t[free], (0.994 - 0.006) / 2**k))


def test_delta_floor_and_float32_near_T():
    tr = get_trajectory("ot_fm")
    t = torch.full((8,), 0.994)
    s = torch.zeros(8)
    r = mapping_fn(s, t, tr, "constant_eta", 20)  # decrement 1.5e-4 in eta: below float32 spacing at t ~ 1
    assert bool((r < t).all())
    r = mapping_fn(s, t, tr, "constant_eta", 20, delta=1e-4)
    assert bool((t - r >= 1e-4 - 1e-7).all())


def test_unknown_mapping():
    with pytest.raises(ValueError, match="constant_eta"):
        mapping_fn(torch.zeros(1), torch.ones(1) * 0.5, get_trajectory("ot_fm"), "linear", 3)
