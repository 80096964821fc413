"""The weights' EMA and EDM's ramp-up (imm/training/ema.py): the decay per update against its closed form, the
fixed EMA unchanged, and what an early evaluation samples."""

import pytest
import torch

from imm.training.ema import ema_model, half_life, ramped_decay


def test_half_life_of_a_decay():
    assert half_life(0.5) == pytest.approx(1.0)
    assert 0.999 ** half_life(0.999) == pytest.approx(0.5)
    assert half_life(0.9999) == pytest.approx(6931.1, abs=0.1)


@pytest.mark.parametrize("n, expected", [(1, 0.5 ** (1 / 0.05)), (100, 0.5 ** (1 / 5)), (2000, 0.5 ** (1 / 100))])
def test_ramped_decay_halves_the_weight_of_the_recent_share_of_the_run(n, expected):
    """After n updates the half-life is rampup * n: 0.05 * 100 = 5 steps, so beta = 0.5^(1/5)."""
    assert float(ramped_decay(0.999, 0.05, torch.tensor(n))) == pytest.approx(expected, rel=1e-12)


def test_ramped_decay_is_the_configured_decay_once_ramped():
    h = half_life(0.999)  # 692.8 steps: ramped from n = h / 0.05 = 13856 on
    assert float(ramped_decay(0.999, 0.05, torch.tensor(13_857))) == pytest.approx(0.999, rel=1e-12)
    assert float(ramped_decay(0.999, 0.05, torch.tensor(10**6))) == pytest.approx(0.999, rel=1e-12)
    assert float(ramped_decay(0.999, 0.05, torch.tensor(13_000))) < 0.999
    assert h / 0.05 == pytest.approx(13_856, abs=1)


def averaged(values, decay, rampup):
    """The EMA of a one-weight model whose weight is values[i] at update i."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = ema_model(model, decay, rampup)
    for v in values:
        model.weight.data.fill_(v)
        ema.update_parameters(model)
    return float(ema.module.weight)


def test_the_ema_follows_its_recurrence():
    """e_1 = w_1, then e_n = beta_n e_{n-1} + (1 - beta_n) w_n with beta_n from the n - 1 updates before it."""
    values = [float(i % 7) - 3.0 for i in range(300)]
    for rampup in (0.0, 0.05):
        e = values[0]
        for n, v in enumerate(values[1:], start=1):
            beta = 0.99 if rampup == 0 else 0.5 ** (1 / min(rampup * n, half_life(0.99)))
            e = beta * e + (1 - beta) * v
        assert averaged(values, 0.99, rampup) == pytest.approx(e, rel=1e-5, abs=1e-6)


def test_an_early_evaluation_samples_recent_weights_with_the_ramp_up():
    """The weights jump from 0 to 1 after the first 100 of 1000 updates. At 0.9999 without ramp-up the EMA still
    holds 0.9999^900 = 91% of the early weights; with EDM's ramp-up (0.05) those are weighted by less than 1e-6."""
    values = [0.0] * 100 + [1.0] * 900
    fixed, ramped = averaged(values, 0.9999, 0.0), averaged(values, 0.9999, 0.05)
    assert fixed == pytest.approx(1 - 0.9999**900, rel=1e-4)
    # the early weights keep the product of the decays of updates 100..999: 0.5^(20 sum 1/n) = 0.5^(20 ln 10) ~ 1e-14
    assert 1 - ramped < 1e-6


def test_the_ranking_benchmark_runs_at_toy_size(tmp_path):
    """benchmarks/studies/ema_ranking.py end to end at toy size: both variants trained, rho reported and written."""
    import json

    from benchmarks.studies import ema_ranking as bench

    assert bench.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert bench.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert bench.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    out = tmp_path / "ranking.json"
    assert bench.main(["--trials", "2", "--steps", "20", "--workers", "1", "--eval-samples", "64",
                          "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert len(got["results"]["fixed"]) == len(got["results"]["rampup"]) == 2
    assert got["results"]["fixed"][0]["early_step"] == 2 and got["results"]["fixed"][0]["final_step"] == 20
