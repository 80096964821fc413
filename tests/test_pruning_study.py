"""benchmarks/studies/pruning.py's replay: a pruner that judges before a late bloomer's burst stops it, and the
regret it reports is the difference of the final values."""

from benchmarks.studies import pruning

STEPS = range(250, 3001, 250)


def late_bloomer() -> dict[int, float]:
    """Worst of all until step 1250, best from step 1500 on (its last three evaluations: 0.01)."""
    return {s: 1.0 if s < 1500 else 0.01 for s in STEPS}


def steady(value: float) -> dict[int, float]:
    return {s: value for s in STEPS}


def test_an_early_rung_stops_the_late_bloomer_and_a_rung_after_its_burst_keeps_it():
    curves = [late_bloomer(), *(steady(0.5 + 0.01 * i) for i in range(5))]
    early = pruning.candidates(3000, 0.001)["asha from 1/6, x3 (the demo's)"]
    late = pruning.candidates(3000, 0.001)["asha from 1/2, x2"]
    order = [1, 2, 3, 4, 5, 0]  # the late bloomer last: at step 500 every other trial is ahead of it
    assert pruning.replay_order(curves, order, early(), concurrency=2)[0] == 500
    assert pruning.replay_order(curves, order, late(), concurrency=2)[0] == 3000


def test_judge_counts_the_best_pruned_and_its_regret():
    curves = [late_bloomer(), *(steady(0.5 + 0.01 * i) for i in range(5))]
    res = pruning.judge([curves], budget=3000, floor=0.001, orders=10, concurrency=2)
    assert res["none"] == {"best_pruned": 0.0, "top3_pruned": 0.0, "regret": 0.0, "regret_over_noise": 0.0,
                           "steps": 1.0}
    early = res["asha from 1/6, x3 (the demo's)"]
    assert 0 < early["best_pruned"] <= 1 and early["regret_over_noise"] == early["best_pruned"]
    # each replay that stops the best finds 0.50 at best instead of 0.01
    assert abs(early["regret"] - early["best_pruned"] * (0.5 - 0.01)) < 1e-9
    assert res["asha from 1/2, x2"]["best_pruned"] == 0.0


def test_a_trials_final_value_is_the_mean_of_its_last_three_evaluations():
    assert pruning.final_value({250: 9.0, 500: 1.0, 750: 2.0, 1000: 6.0}) == 3.0
