"""Kernels as the notes define them and MMD^2 against a direct double loop (notes sections 6-7)."""

import math

import pytest
import torch

from imm.maths.estimators import mmd2
from imm.maths.kernels import get_kernel


def _ref_kernel(name, x, y, w, d):
    dist = max(math.dist(x, y), 1e-8)
    return {
        "laplace": math.exp(-w * dist / d),
        "rbf": math.exp(-w * math.dist(x, y) ** 2 / d),
        "energy": -dist,
    }[name]


@pytest.mark.parametrize("name", ["laplace", "rbf", "energy"])
def test_gram_matches_definition(name):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 4, 5, generator=g, dtype=torch.float64), torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    scale = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    gram = get_kernel(name)(x, y, scale)
    assert gram.shape == (3, 4, 6)
    for b in range(3):
        for i in range(4):
            for j in range(6):
                ref = _ref_kernel(name, x[b, i].tolist(), y[b, j].tolist(), float(scale[b]), 5)
                assert math.isclose(float(gram[b, i, j]), ref, rel_tol=1e-12)


def test_laplace_gradient_is_finite_at_zero_distance():
    x = torch.randn(2, 3, 4, requires_grad=True)
    get_kernel("laplace")(x, x, torch.ones(2)).sum().backward()
    assert torch.isfinite(x.grad).all()


def _mmd_loop(name, x, y, w, unbiased):
    m, d = len(x), len(x[0])
    k = lambda a, b: _ref_kernel(name, a, b, w, d)  # noqa: E731
    total, count = 0.0, 0
    for i in range(m):
        for j in range(m):
            if unbiased and i == j:
                continue
            total += k(x[i], x[j]) + k(y[i], y[j]) - k(x[i], y[j]) - k(x[j], y[i])
            count += 1
    return total / count


@pytest.mark.parametrize("name", ["laplace", "rbf", "energy"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd2_matches_double_loop(name, unbiased):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 4, 3, generator=g, dtype=torch.float64), torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    scale = torch.rand(5, generator=g, dtype=torch.float64) * 3
    got = mmd2(x, y, get_kernel(name), scale, unbiased=unbiased)
    for b in range(5):
        ref = _mmd_loop(name, x[b].tolist(), y[b].tolist(), float(scale[b]), unbiased)
        assert math.isclose(float(got[b]), ref, rel_tol=1e-10, abs_tol=1e-12)


def test_v_statistic_is_paper_formula():
    """(1/M^2) sum_{j,k} k(y_t^j, y_t^k) + k(y_r^j, y_r^k) - 2 k(y_t^j, y_r^k)."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 8, 2, generator=g), torch.randn(4, 8, 2, generator=g)
    kern, scale = get_kernel("laplace"), torch.full((4,), 3.0)
    ref = kern(x, x, scale).mean((-1, -2)) + kern(y, y, scale).mean((-1, -2)) - 2 * kern(x, y, scale).mean((-1, -2))
    torch.testing.assert_close(mmd2(x, y, kern, scale), ref)


@pytest.mark.parametrize("name", ["laplace", "rbf"])
def test_u_statistic_unbiased_for_equal_distributions(name):
    """E[MMD_u^2] = 0 when both groups come from one distribution; the V-statistic is biased upward."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(20000, 4, 2, generator=g), torch.randn(20000, 4, 2, generator=g)
    scale = torch.ones(20000)
    u = mmd2(x, y, get_kernel(name), scale, unbiased=True)
    v = mmd2(x, y, get_kernel(name), scale, unbiased=False)
    assert abs(float(u.mean())) < 4 * float(u.std()) / math.sqrt(len(u))
    assert float(v.mean()) > 10 * float(v.std()) / math.sqrt(len(v))


def test_mmd_detects_different_distributions():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(5000, 4, 2, generator=g), torch.randn(5000, 4, 2, generator=g) + 1.0
    u = mmd2(x, y, get_kernel("laplace"), torch.ones(5000), unbiased=True)
    assert float(u.mean()) > 10 * float(u.std()) / math.sqrt(len(u))


def test_u_statistic_needs_two_particles():
    with pytest.raises(ValueError, match="group_size"):
        mmd2(torch.zeros(2, 1, 2), torch.zeros(2, 1, 2), get_kernel("rbf"), torch.ones(2), unbiased=True)


def test_unknown_kernel():
    with pytest.raises(ValueError, match="laplace"):
        get_kernel("gauss")
