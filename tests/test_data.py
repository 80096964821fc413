import numpy as np
import pytest
import torch

from imm.config import load_config
from imm.data import load_data, shard
from imm.metrics import energy_distance


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard", "moons"])
def test_toy_sets_are_deterministic_and_split(name):
    cfg = load_config("toy2d", [f"data.name={name}", "data.n_train=1000", "data.n_heldout=300"]).data
    a_train, a_held = load_data(cfg)
    b_train, _ = load_data(cfg)
    assert a_train.shape == (1000, 2) and a_held.shape == (300, 2)
    assert torch.equal(a_train, b_train)
    assert a_train.abs().max() < 3


def test_checkerboard_occupies_the_dark_squares():
    cfg = load_config("toy2d", ["data.name=checkerboard"]).data
    x, _ = load_data(cfg)
    parity = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])) % 2
    assert bool((parity == parity[0]).all())


def test_npy_split(tmp_path):
    arr = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    np.save(tmp_path / "pts.npy", arr)
    cfg = load_config("toy2d", [f"data.name=npy:{tmp_path / 'pts.npy'}", "data.heldout_fraction=0.25"]).data
    train, held = load_data(cfg)
    assert train.shape == (150, 3) and held.shape == (50, 3)
    rows = {tuple(r) for r in np.concatenate([train.numpy(), held.numpy()])}
    assert rows == {tuple(r) for r in arr}


def test_npy_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.name"):
        load_data(load_config("toy2d", [f"data.name=npy:{tmp_path}/missing.npy"]).data)
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        load_data(load_config("toy2d", [f"data.name=npy:{tmp_path}/bad.npy"]).data)


def test_shard_partitions():
    x = torch.arange(10)[:, None]
    parts = [shard(x, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).flatten().tolist()) == list(range(10))


def test_energy_distance_closed_form():
    """For 1-D N(0,1) vs N(mu,1): D^2 = 2 E|X-Y| - E|X-X'| - E|Y-Y'| with E|N(m, 2)| closed form."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4000, 1, generator=g), torch.randn(4000, 1, generator=g) + 1.0
    s = np.sqrt(2.0)
    from math import erf, exp, pi, sqrt

    e_abs = lambda m: s * sqrt(2 / pi) * exp(-(m**2) / (2 * s**2)) + m * erf(m / (s * sqrt(2)))  # noqa: E731
    ref = 2 * e_abs(1.0) - 2 * e_abs(0.0)
    assert abs(energy_distance(x, y) - ref) < 0.02
    assert abs(energy_distance(x, torch.randn(4000, 1, generator=g))) < 0.01
