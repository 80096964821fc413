"""w(s, t) against hand-computed values (paper eq. 13) and the time sampler (notes sections 5, 8)."""

import math

import pytest
import torch

from imm.maths.trajectories import get_trajectory
from imm.maths.weighting import Weighting, sample_times


def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("a,b", [(1, 5), (2, 4)])
def test_sigmoid_weighting_ot_fm_by_hand(t, a, b):
    lam = 2 * math.log((1 - t) / t)
    dlam = 2 / (t * (1 - t))
    alpha, sigma = 1 - t, t
    ref = 0.5 * _sigmoid(b - lam) * dlam * alpha**a / (alpha**2 + sigma**2)
    got = Weighting("sigmoid", a=a, b=b)(torch.tensor([t], dtype=torch.float64), get_trajectory("ot_fm"))
    assert math.isclose(float(got), ref, rel_tol=1e-12)


def test_sigmoid_weighting_cosine_by_hand():
    t = 0.3
    alpha, sigma = math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)
    lam = math.log(alpha**2 / sigma**2)
    dlam = 2 * math.pi / math.sin(math.pi * t)  # -d/dt log(cot^2(pi t / 2))
    ref = 0.5 * _sigmoid(5 - lam) * dlam * alpha / (alpha**2 + sigma**2)  # alpha^2 + sigma^2 = 1 here
    got = Weighting("sigmoid", a=1, b=5)(torch.tensor([t], dtype=torch.float64), get_trajectory("cosine"))
    assert math.isclose(float(got), ref, rel_tol=1e-12)


def test_factors_switch_one_by_one():
    """The paper's cumulative ablation: w = 1; + ELBO factor; + alpha^a; + 1/(alpha^2 + sigma^2)."""
    tr, t = get_trajectory("ot_fm"), torch.tensor([0.3], dtype=torch.float64)
    elbo = 0.5 * _sigmoid(5 - 2 * math.log(0.7 / 0.3)) * 2 / (0.3 * 0.7)
    cases = [
        (Weighting("constant"), 1.0),
        (Weighting("sigmoid", alpha=False, norm=False), elbo),
        (Weighting("sigmoid", a=2, norm=False), elbo * 0.7**2),
        (Weighting("sigmoid", a=2), elbo * 0.7**2 / (0.49 + 0.09)),
        (Weighting("sigmoid", elbo=False, alpha=False), 1 / (0.49 + 0.09)),
    ]
    for w, ref in cases:
        assert math.isclose(float(w(t, tr)), ref, rel_tol=1e-12), w


@pytest.mark.parametrize("kind", ["uniform", "lognormal"])
def test_time_sampler_support(kind):
    tr = get_trajectory("ot_fm")
    g = torch.Generator().manual_seed(0)
    s, t = sample_times(50000, tr, 0.006, 0.994, kind, generator=g)
    assert bool((0.006 <= s).all() and (s <= t).all() and (t <= 0.994).all())


def test_uniform_time_sampler_moments():
    """t ~ U(eps, T): mean (eps + T)/2; s | t ~ U(eps, t): E[s] = eps + (E[t] - eps)/2."""
    g = torch.Generator().manual_seed(0)
    s, t = sample_times(200000, get_trajectory("ot_fm"), 0.1, 0.9, "uniform", generator=g)
    assert abs(float(t.mean()) - 0.5) < 3e-3
    assert abs(float(s.mean()) - 0.3) < 3e-3


def test_lognormal_time_sampler_median():
    """log eta ~ N(p_mean, p_std^2): the median of eta is exp(p_mean)."""
    tr = get_trajectory("ot_fm")
    g = torch.Generator().manual_seed(0)
    _, t = sample_times(100000, tr, 0.0, 0.9999, "lognormal", p_mean=0.3, p_std=0.5, generator=g)
    assert abs(float(tr.eta(t.double()).median()) - math.exp(0.3)) < 0.02
