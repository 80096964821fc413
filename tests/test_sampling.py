"""Samplers against the exact flow of Gaussian data, where every map is known in closed form (notes section 9).

For data N(0, sigma_d^2 I), x_t ~ N(0, sigma_d^2 n(t)) with n(t) = alpha_t^2 + sigma_t^2, and the
probability-flow map from t to s is x -> x sqrt(n(s) / n(t)); the FM velocity is x n'(t) / (2 n(t)).
"""

import math

import pytest
import torch

from imm.maths.trajectories import get_trajectory
from imm.sampling import initial_noise, time_grid
from imm.sampling.maps import pushforward, restart
from imm.sampling.velocity import euler, heun

SIGMA_D = 0.8


class ExactFlowMap(torch.nn.Module):
    def __init__(self, traj):
        super().__init__()
        self.traj, self.sigma_d = traj, torch.tensor(SIGMA_D, dtype=torch.float64)

    def n(self, t):
        return self.traj.alpha(t) ** 2 + self.traj.sigma(t) ** 2

    def forward(self, x, s, t):
        return x * torch.sqrt(self.n(s) / self.n(t))[:, None]


class ExactVelocity(ExactFlowMap):
    def forward(self, x, t):  # ot_fm: n'(t) = 4t - 2
        return x * ((4 * t - 2) / (2 * self.n(t)))[:, None]


@pytest.mark.parametrize("traj_name", ["ot_fm", "cosine"])
@pytest.mark.parametrize("steps", [1, 2, 8])
@pytest.mark.parametrize("schedule", ["uniform", "eta"])
def test_pushforward_composes_the_exact_map(traj_name, steps, schedule):
    tr = get_trajectory(traj_name)
    model = ExactFlowMap(tr)
    grid = time_grid(steps, tr, 0.006, tr.default_T, schedule)
    x = torch.randn(100, 2, dtype=torch.float64)
    ratio = math.sqrt(float(model.n(grid[-1:]) / model.n(grid[:1])))
    torch.testing.assert_close(pushforward(model, x, grid), x * ratio)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_restart_keeps_the_data_distribution(steps):
    tr = get_trajectory("ot_fm")
    model = ExactFlowMap(tr)
    g = torch.Generator().manual_seed(0)
    x = initial_noise(200000, (1,), model.sigma_d, tr, tr.default_T, generator=g).double()
    out = restart(model, x, time_grid(steps, tr, 0.0, tr.default_T), generator=g)
    assert abs(float(out.std()) - SIGMA_D) < 0.01


def test_restart_last_step_is_the_clean_prediction():
    tr = get_trajectory("ot_fm")
    calls = []

    class Spy(ExactFlowMap):
        def forward(self, x, s, t):
            calls.append((float(s[0]), float(t[0])))
            return super().forward(x, s, t)

    grid = time_grid(3, tr, 0.01, 0.994)
    restart(Spy(tr), torch.randn(4, 2, dtype=torch.float64), grid)
    assert [c for pair in calls for c in pair] == pytest.approx([c for t in grid[:-1] for c in (0.01, float(t))])


def test_euler_one_step_closed_form():
    tr = get_trajectory("ot_fm")
    T = 0.994
    x = torch.randn(10, 2, dtype=torch.float64)
    n_T = (1 - T) ** 2 + T**2
    torch.testing.assert_close(euler(ExactVelocity(tr), x, time_grid(1, tr, 0.0, T)), x * (1 - T * (2 * T - 1) / n_T))


@pytest.mark.parametrize("sampler,steps,tol", [(euler, 64, 2e-2), (heun, 8, 2e-3), (heun, 64, 1e-5)])
def test_fm_samplers_converge_to_the_exact_flow(sampler, steps, tol):
    tr = get_trajectory("ot_fm")
    model = ExactVelocity(tr)
    x = torch.randn(10, 2, dtype=torch.float64)
    grid = time_grid(steps, tr, 0.0, 0.994)
    exact = x * math.sqrt(1 / float(model.n(grid[:1])))
    err = float((sampler(model, x, grid) - exact).abs().max() / exact.abs().max())
    assert err < tol


def test_heun_is_at_least_second_order():
    """Halving the step cuts Heun's error by >= 4 (Euler's only by 2)."""
    tr = get_trajectory("ot_fm")
    model = ExactVelocity(tr)
    x = torch.ones(1, 1, dtype=torch.float64)
    exact = 1 / math.sqrt(float(model.n(torch.tensor([0.994], dtype=torch.float64))))
    errs = [abs(float(heun(model, x, time_grid(n, tr, 0.0, 0.994))) - exact) for n in (8, 16)]
    assert errs[0] / errs[1] > 3.5


def test_time_grids():
    tr = get_trajectory("ot_fm")
    u = time_grid(4, tr, 0.006, 0.994, "uniform")
    torch.testing.assert_close(u, torch.linspace(0.994, 0.006, 5, dtype=torch.float64))
    e = time_grid(4, tr, 0.006, 0.994, "eta")
    assert float(e[0]) == 0.994 and float(e[-1]) == 0.006 and bool((e[1:] < e[:-1]).all())
    # EDM rho-spacing: eta_i^(1/7) is linear in i.
    root = tr.eta(e) ** (1 / 7)
    torch.testing.assert_close(root[1:] - root[:-1], (root[1:] - root[:-1]).mean().expand(4))
    # half_eta: T, the middle of [eps_t, T], then the eta grid's rho-spacing from the middle down to eps_t
    h = time_grid(4, tr, 0.006, 0.994, "half_eta")
    assert h[:2].tolist() == [0.994, 0.5] and float(h[-1]) == 0.006
    root = tr.eta(h[1:]) ** (1 / 7)
    torch.testing.assert_close(root[1:] - root[:-1], (root[1:] - root[:-1]).mean().expand(3))
    assert time_grid(2, tr, 0.0, 0.994, "half_eta").tolist() == time_grid(2, tr, 0.0, 0.994, "uniform").tolist()
    assert time_grid(1, tr, 0.0, 0.994, "half_eta").tolist() == [0.994, 0.0]
    ex = time_grid(99, tr, 0.006, 0.994, times=[0.994, 0.583, 0.006])
    assert ex.tolist() == [0.994, 0.583, 0.006]
    with pytest.raises(ValueError, match="decreasing"):
        time_grid(2, tr, 0.006, 0.994, times=[0.5, 0.9])
    with pytest.raises(ValueError, match="steps"):
        time_grid(0, tr, 0.006, 0.994)


def test_initial_noise_is_the_prior_sigma_d_eps_as_the_official_sampler_draws_it():
    """x_T = sigma_d eps (the official get_init_noise), not the marginal at T, 0.6% narrower: told apart here."""
    tr = get_trajectory("ot_fm")
    g = torch.Generator().manual_seed(0)
    x = initial_noise(1_000_000, (1,), torch.tensor(SIGMA_D), tr, 0.994, generator=g)
    assert abs(float(x.std()) - SIGMA_D) < 0.0012
    assert abs(float(x.std()) - SIGMA_D * math.sqrt(0.006**2 + 0.994**2)) > 0.0018


def test_sample_grids_pick_the_tuned_grid_for_their_step_count():
    """Cifar10.yaml's grids are the official ones (1 step T -> eps_t; 2 steps through eta = 1.4, i.e.
    t = 1.4 / 2.4 on ot_fm); other step counts keep the schedule; sample.times still overrides everything."""
    from imm.config import load_config
    from imm.networks import OneStepModel
    from imm.networks.mlp import MLP
    from imm.sampling.generate import start_from_noise

    cfg = load_config("cifar10", ["data.name=8gaussians", "model.arch=mlp"])
    traj = get_trajectory("ot_fm")
    mid = cfg.sample.grids[1][1]
    assert mid == pytest.approx(1.4 / 2.4, abs=1e-9) and float(traj.eta(torch.tensor(mid))) == pytest.approx(1.4)
    model = OneStepModel(MLP(2, hidden=8, depth=1), traj)
    g = torch.Generator().manual_seed(0)
    grid = lambda k, c=cfg: start_from_noise(model, c, 4, k, (2,), g)[1].tolist()  # noqa: E731
    assert grid(1) == pytest.approx([0.994, 0.006])
    assert grid(2) == pytest.approx([0.994, 1.4 / 2.4, 0.006])
    assert grid(4) == pytest.approx(torch.linspace(0.994, 0.006, 5).tolist())  # no tuned grid: uniform
    explicit = load_config("cifar10", ["data.name=8gaussians", "model.arch=mlp", "sample.times=[0.994,0.3,0.006]"])
    assert grid(2, explicit) == pytest.approx([0.994, 0.3, 0.006])


@pytest.mark.parametrize(("grids", "message"), [
    ("[[0.994,0.7,0.8,0.006]]", "sample.grids[0]: [0.994, 0.7, 0.8, 0.006] is not a decreasing list of >= 2 times in "
                                "[eps_t, T] = [0.006, 0.994]"),
    ("[[0.999,0.006]]", "sample.grids[0]: [0.999, 0.006] is not a decreasing list"),
    ("[[0.994,0.5,0.006],[0.994,0.6,0.006]]", "sample.grids[1]: a second grid for 2 step(s); give one per step count"),
])
def test_bad_sample_grids_are_one_line_errors(grids, message):
    from imm.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config("cifar10", ["data.name=8gaussians", "model.arch=mlp", f"sample.grids={grids}"])
    assert str(e.value).startswith(message)
