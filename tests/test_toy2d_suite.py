"""The 2D suite (imm/data/toy2d.py): twelve sets split once into a tuning and a held-out half, each set the shape
its docstring names (weights, radii, tails checked against their stated values)."""

import math

import pytest
import torch

from imm.config import load_config
from imm.data import load_data
from imm.data.toy2d import HELDOUT, TOY_SETS, TUNING

N = 40_000


def points(name: str, n: int = N) -> torch.Tensor:
    return TOY_SETS[name](n, torch.Generator().manual_seed(0))


def test_the_suite_is_twelve_sets_split_in_two_disjoint_halves():
    assert len(TUNING) == len(HELDOUT) == 6 and not set(TUNING) & set(HELDOUT)
    assert set(TUNING) | set(HELDOUT) == set(TOY_SETS)


@pytest.mark.parametrize("name", TUNING + HELDOUT)
def test_every_set_is_deterministic_finite_centred_and_of_unit_order(name):
    cfg = load_config("toy2d", [f"data.name={name}", "data.n_train=2000", "data.n_heldout=500"]).data
    a, b = load_data(cfg), load_data(cfg)
    assert torch.equal(a.train, b.train) and a.train.shape == (2000, 2) and a.heldout.shape == (500, 2)
    x = points(name)
    assert torch.isfinite(x).all()
    assert x.mean(0).abs().max() < 0.5, x.mean(0)
    assert 0.5 < float(x.std()) < 1.6, float(x.std())


def nearest(x: torch.Tensor, centres: list[tuple[float, float]]) -> torch.Tensor:
    return torch.cdist(x, torch.tensor(centres)).argmin(1)


def test_the_unequal_mixture_has_its_weights():
    share = torch.bincount(nearest(points("unequal_mixture"), [(-1.0, -0.5), (1.2, 0.8), (0.8, -1.4), (-1.2, 1.5)]),
                           minlength=4).float() / N
    assert torch.allclose(share, torch.tensor([0.55, 0.25, 0.15, 0.05]), atol=0.01), share


def test_crescent_blobs_has_a_tight_centre_a_thin_crescent_and_blobs_on_the_ring():
    r = points("crescent_blobs").norm(dim=1)
    assert float((r < 0.2).float().mean()) == pytest.approx(0.15, abs=0.01)  # the centre, std 0.04
    assert float(((r > 0.75) & (r < 1.05)).float().mean()) == pytest.approx(0.35, abs=0.01)  # the crescent
    assert float((r > 1.3).float().mean()) == pytest.approx(0.5, abs=0.01)  # the five blobs


def test_the_grid_has_25_equal_modes():
    x = points("grid")
    centres = [(0.8 * i - 1.6, 0.8 * j - 1.6) for j in range(5) for i in range(5)]
    share = torch.bincount(nearest(x, centres), minlength=25).float() / N
    assert torch.allclose(share, torch.full((25,), 1 / 25), atol=0.005)
    assert float((x - torch.tensor(centres)[nearest(x, centres)]).std()) == pytest.approx(0.05, rel=0.05)


def test_rings_put_their_points_by_length():
    r = points("rings").norm(dim=1)
    assert float((r < 1.4).float().mean()) == pytest.approx(2 / 7, abs=0.01)
    assert float(r[r > 1.4].mean()) == pytest.approx(2.0, abs=0.01)
    assert float(r[r < 1.4].mean()) == pytest.approx(0.8, abs=0.01)


def test_tight_wide_has_a_tight_cluster_of_a_third_of_the_weight():
    near = (points("tight_wide") - torch.tensor([-1.5, 0.5])).norm(dim=1) < 0.16  # 4 stds of the tight cluster
    assert float(near.float().mean()) == pytest.approx(0.3, abs=0.01)


def test_heavy_tails_are_a_student_t_with_four_degrees_of_freedom():
    """Along its major axis: variance 0.6^2 * 4 / (4 - 2) = 0.72, and tails far heavier than a Gaussian's."""
    x = points("heavy_tails", 200_000)
    major = x @ torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)])
    assert float(major.var()) == pytest.approx(0.72, rel=0.1)
    assert float((major.abs() > 4 * 0.6).float().mean()) > 10 * 6.3e-5  # a Gaussian of std 0.6: P(|z| > 4) = 6.3e-5


def test_banana_lies_on_its_parabola():
    x = points("banana")
    assert float((x[:, 1] - (0.5 * x[:, 0] ** 2 - 1)).std()) == pytest.approx(0.15, rel=0.03)
