"""The steps study: its exact reference flow, and the quick study's monotonicity check on real training."""

import json
import math

import pytest
import torch

# A package import (the repository root is on sys.path, which the study's spawned workers inherit), so that the
# workers can unpickle the study's functions by their module's name.
from benchmarks.studies import steps_study as study
from imm.data.toy2d import eight_gaussians
from imm.metrics import energy_distance


def _marginal(t: float, n: int, sigma_d: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (1 - t) * eight_gaussians(n, g).double() + t * sigma_d * torch.randn(n, 2, generator=g, dtype=torch.float64)


def test_the_exact_mixture_flow_is_a_flow_map_of_the_true_marginals():
    """gmm_flow is the reference the step errors are measured against: f_{t,t} = id, f_{s,r} f_{r,t} = f_{s,t},
    and it carries the true marginal at t to the true marginal at s (a wrong sign or coefficient in the mixture's
    velocity breaks the last one by orders of magnitude)."""
    sd = 1.418
    x = _marginal(0.9, 3000, sd, 0)
    assert torch.equal(study.gmm_flow(x, 0.9, 0.9, sd), x)
    one = study.gmm_flow(x, 0.9, 0.2, sd, n=200)
    two = study.gmm_flow(study.gmm_flow(x, 0.9, 0.5, sd, n=100), 0.5, 0.2, sd, n=100)
    assert float((one - two).norm(dim=1).max()) < 1e-4
    pushed = study.gmm_flow(x, 0.9, 0.0, sd, n=200)
    assert energy_distance(pushed, _marginal(0.0, 3000, sd, 1)) < 2e-3  # the metric's floor at n = 3000
    assert energy_distance(x, _marginal(0.0, 3000, sd, 1)) > 0.05  # what the flow had to undo


def test_the_monotonicity_check_allows_the_larger_of_the_seed_spreads_and_the_metrics_noise():
    steps = (1, 2, 4, 8)
    assert study.monotone([0.05, 0.010, 0.008, 0.011], [0, 0.002, 0, 0], steps)
    assert not study.monotone([0.05, 0.010, 0.008, 0.013], [0, 0.002, 0, 0], steps)
    assert not study.monotone([0.05, 0.010, 0.0125, 0.001], [0, 0.002, 0, 0], steps)
    assert study.monotone([0.05, 0.010, 0.0125, 0.001], [0, 0.002, 0.003, 0], steps)  # the 4-step seeds disagree
    # 8gaussians with 2 seeds: a 2-seed spread far below what the metric resolves
    assert not study.monotone([0.01, 0.0015, 0.0021, 0.0001], [0, 0.0002, 0.0001, 0], steps)
    assert study.monotone([0.01, 0.0015, 0.0021, 0.0001], [0, 0.0002, 0.0001, 0], steps, noise=0.0007)
    assert not study.monotone([0.01, 0.0015, 0.0021, 0.0001], [0, 0.0002, 0.0001, 0], steps, noise=0.0005)


@pytest.mark.slow
def test_the_quick_study_shows_the_shipped_toy2d_improving_from_two_to_four_and_eight_steps(tmp_path):
    """Two seeds of the shipped toy2d config (3000 steps each, two at a time) and flow matching (1000 steps): the
    study exits 0 only if IMM's quality at 4 and 8 steps is no worse than at 2 (within the seed spread or the
    metric's noise floor); the tables and figure are written. (This also holds what tests/test_quality.py held: IMM
    at 1-2 steps far ahead of FM at 2.)"""
    code = study.main(["--quick", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    imm = [r for r in results if r["job"]["method"] == "imm"]
    energies = [r["energy"][r["sampler"]] for r in imm]
    assert code == 0, energies
    assert [r["sampler"] for r in imm] == ["restart/half_eta"] * 2  # the shipped toy2d's
    mean = [sum(e[i] for e in energies) / 2 for i in range(4)]
    assert mean[3] < mean[1] < mean[0] and all(math.isfinite(v) for v in mean)  # 8 steps beat 2, which beat 1
    # ...and IMM against flow matching on the same network and budget (Euler, the same seed 0 training):
    # IMM at 1 and 2 steps at least 5x better than FM at 2 (measured margin >= 23x). IMM at 2 steps against FM at 8
    # is a tie within the seed spread here (0.0010 against 0.0006 in one run; docs/science), so it is not asserted.
    fm = next(r for r in results if r["job"]["method"] == "fm")["energy"]["euler/uniform"]
    assert mean[0] < fm[1] / 5 and mean[1] < fm[1] / 5, (mean, fm)
    assert (tmp_path / "out" / "quality_vs_steps.png").stat().st_size > 10_000
    assert "restart/half_eta (the config's)" in (tmp_path / "out" / "tables.md").read_text()
