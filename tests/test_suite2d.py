"""benchmarks/studies/suite2d.py: the checks the shipped 2D defaults are held to, on made-up scores that pass and fail
each one."""

import json
from pathlib import Path

import pytest

from benchmarks.studies import suite2d


def results(table: dict[tuple[str, str], list[list[float]]]) -> list[dict]:
    """{(method, set): [energies at 1, 2, 4, 8 steps per seed]} -> the script's result records."""
    return [{"method": m, "set": s, "seed": i, "energy": e} for (m, s), runs in table.items()
            for i, e in enumerate(runs)]


FM = {("fm", s): [[1.0, 0.2, 0.04, 0.010]] * 2 for s in ("a", "b", "c", "d", "e")}


def test_summary_is_the_mean_and_spread_over_seeds_and_the_median_over_sets():
    summ = suite2d.summary(results({("imm", "a"): [[0.1, 0.02, 0.01, 0.01], [0.3, 0.04, 0.01, 0.03]],
                                    ("imm", "b"): [[0.2, 0.01, 0.01, 0.01]] * 2,
                                    ("imm", "c"): [[0.5, 0.05, 0.01, 0.01]] * 2}))
    mean, spread = summ["imm"]["a"]
    assert mean == [0.2, 0.03, 0.01, 0.02] and [round(x, 12) for x in spread] == [0.2, 0.02, 0.0, 0.02]
    assert suite2d.median_over_sets(summ, "imm", 1) == 0.2 and suite2d.median_over_sets(summ, "imm", 2) == 0.03


def test_each_check_passes_and_fails_where_it_should():
    good_imm = {("imm", s): [[0.05, 0.008, 0.007, 0.006]] * 2 for s in "abcde"}
    mf_wins_four = {("meanflow", s): [[0.02, 0.01 if s != "e" else 0.5, 0.01, 0.01]] * 2 for s in "abcde"}
    ok = suite2d.checks(suite2d.summary(results(FM | good_imm | mf_wins_four)))
    assert ok == {"imm_2_vs_fm_8": True, "imm_not_rising": True, "meanflow_2_vs_fm_2": True}  # 4 of 5 sets: 80%
    slow_imm = {k: [[0.05, 0.02, 0.02, 0.02]] * 2 for k in good_imm}  # 0.02 at 2 steps against FM's 0.010 at 8
    rising = good_imm | {("imm", "c"): [[0.05, 0.008, 0.012, 0.02], [0.05, 0.009, 0.013, 0.021]]}  # beyond the spread
    noisy = good_imm | {("imm", "c"): [[0.05, 0.008, 0.012, 0.02], [0.05, 0.02, 0.002, 0.01]]}  # within it
    mf_wins_three = mf_wins_four | {("meanflow", "d"): [[0.02, 0.5, 0.01, 0.01]] * 2}
    assert not suite2d.checks(suite2d.summary(results(FM | slow_imm)))["imm_2_vs_fm_8"]
    assert not suite2d.checks(suite2d.summary(results(FM | rising)))["imm_not_rising"]
    assert suite2d.checks(suite2d.summary(results(FM | noisy)))["imm_not_rising"]
    assert not suite2d.checks(suite2d.summary(results(FM | mf_wins_three)))["meanflow_2_vs_fm_2"]
    # a rise from 0.008 to 0.012 and 0.020 (spread 0.001) is within a noise floor of 0.013 on that set, not of 0.005
    assert suite2d.checks(suite2d.summary(results(FM | rising)), {"c": 0.013})["imm_not_rising"]
    assert not suite2d.checks(suite2d.summary(results(FM | rising)), {"c": 0.005, "a": 0.5})["imm_not_rising"]


def test_the_noise_floor_is_what_the_metric_reads_for_exact_samples():
    floor = suite2d.noise_floor("heavy_tails", draws=4)
    assert 1e-5 < floor < 2e-3, floor  # 4000 exact points against 4000 held-out ones: a few 1e-4


@pytest.mark.slow
def test_the_quick_suite_holds_imm_at_two_steps_to_flow_matching_at_eight_on_a_held_out_set(tmp_path):
    """IMM and FM trained at the shipped toy2d settings on a held-out set (grid), one seed: IMM's 2-step
    energy no higher than FM's 8-step one (measured 0.0059 against 0.0090)."""
    code = suite2d.main(["--quick", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    assert code == 0, (tmp_path / "out" / "tables.md").read_text()


def test_tuning_ranks_candidates_by_the_geometric_mean_of_their_worst_of_2_4_8_steps():
    from benchmarks.reports import suite2d_tuning as tuning

    def row(cand, s, e):
        return {"candidate": {"imm.kernel": cand}, "set": s, "energy": dict(zip((1, 2, 4, 8), e, strict=True))}

    rows = [row("steady", "a", [0.5, 0.010, 0.008, 0.006]), row("steady", "b", [0.5, 0.040, 0.030, 0.020]),
            # best at 2 steps on both sets, but rising after: judged by its 8-step score
            row("rising", "a", [0.5, 0.005, 0.020, 0.090]), row("rising", "b", [0.5, 0.020, 0.030, 0.040]),
            # below the floor on one set: floored, not rewarded for the metric's noise
            row("floor", "a", [0.5, -0.001, -0.002, 0.00001]), row("floor", "b", [0.5, 0.10, 0.09, 0.08]),
            row("one_set_only", "a", [0.1, 0.001, 0.001, 0.001])]
    ranked = tuning.rank(rows)
    assert [c["candidate"]["imm.kernel"] for c in ranked] == ["floor", "steady", "rising"]
    assert ranked[0]["score"] == pytest.approx((1e-4 * 0.10) ** 0.5)
    assert ranked[1]["score"] == pytest.approx((0.010 * 0.040) ** 0.5)
    assert ranked[2]["score"] == pytest.approx((0.090 * 0.040) ** 0.5)


def test_the_suite_sweeps_tune_on_the_tuning_half_only():
    from imm.data.toy2d import TUNING
    from orchestrator.sweep.spec import load_sweep

    for path in sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("toy2d_suite_*.yaml")):
        (sets,) = [p.choices for p in load_sweep(path).params if p.key == "data.name"]
        assert sorted(sets) == sorted(TUNING), path.name


def test_a_cached_result_is_read_back_only_for_the_same_resolved_config(tmp_path):
    a, b = suite2d.job_config("imm", "grid", 0), suite2d.job_config("imm", "grid", 1)
    assert suite2d.cache_file(str(tmp_path), a) == suite2d.cache_file(str(tmp_path), suite2d.job_config("imm", "grid", 0))
    assert suite2d.cache_file(str(tmp_path), a) != suite2d.cache_file(str(tmp_path), b)
    a.imm.group_size = 8  # a changed default is trained again
    assert suite2d.cache_file(str(tmp_path), a) != suite2d.cache_file(str(tmp_path), suite2d.job_config("imm", "grid", 0))
    fm = suite2d.job_config("fm", "grid", 0)
    fm.imm.group_size = 8  # another method's section is not this run's business
    assert suite2d.cache_file(str(tmp_path), fm) == suite2d.cache_file(str(tmp_path), suite2d.job_config("fm", "grid", 0))


def test_keep_adds_the_published_results_of_the_methods_not_run_and_the_header_counts_their_seeds(tmp_path):
    published = [{"method": m, "set": "a", "seed": seed, "energy": [0.1] * 4} for m in ("imm", "tvm") for seed in (0, 1, 2)]
    (tmp_path / "results.json").write_text(json.dumps(published))
    kept = suite2d.kept_results(tmp_path, ["tvm"])
    assert {r["method"] for r in kept} == {"imm"} and len(kept) == 3
    assert suite2d.kept_results(tmp_path / "none", ["tvm"]) == []
    fresh = [{"method": "tvm", "set": "a", "seed": 0, "energy": [0.2] * 4}]
    assert suite2d.seed_counts(kept + fresh) == "3 (tvm: 1)" and suite2d.seed_counts(kept) == "3"


def test_a_distilled_row_trains_its_method_from_the_sets_flow_matching_teacher(tmp_path, monkeypatch):
    """--distill meanflow: the job "meanflow (distilled)" trains meanflow with train.teacher = the set's FM checkpoint
    (trained once, then reused), and the teacher's velocity is what the loss asks for; rows sort after their method."""
    from benchmarks.studies.common import train_ema
    from imm.training.teacher import Teacher

    tiny = ["model.hidden=16", "model.depth=1", "train.steps=4", "train.batch_size=32", "train.checkpoint_every=4",
            "train.log_every=4", "data.n_train=200"]
    real_config = suite2d.job_config
    monkeypatch.setattr(suite2d, "job_config", lambda *a, **k: _with(real_config(*a, **k), tiny))
    teacher = suite2d.teacher_checkpoint("grid", str(tmp_path))
    assert Path(teacher).is_file() and suite2d.teacher_checkpoint("grid", str(tmp_path)) == teacher
    cfg = suite2d.job_config("meanflow", "grid", 0, teacher=teacher)
    assert cfg.train.teacher == teacher and cfg.method == "meanflow"
    calls = []
    velocity = Teacher.velocity
    monkeypatch.setattr(Teacher, "velocity", lambda self, *a, **k: calls.append(1) or velocity(self, *a, **k))
    train_ema(cfg)
    assert len(calls) == 4  # once per step: MeanFlow's v_T(z_t, t)
    assert sorted(["tvm", "meanflow (distilled)", "imm", "meanflow"], key=suite2d.rank) == [
        "imm", "meanflow", "meanflow (distilled)", "tvm"]


def _with(cfg, overrides):
    from omegaconf import OmegaConf

    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))


def test_a_method_with_one_seed_shows_no_spread(tmp_path):
    res = results({("imm", "a"): [[0.1, 0.02, 0.01, 0.01], [0.3, 0.04, 0.01, 0.03]], ("tvm", "a"): [[0.1] * 4]})
    text = suite2d.report(suite2d.summary(res), res, tmp_path)
    assert "| tvm | a | 0.1000 | 0.1000 |" in text and "| imm | a | 0.2000 ± 0.2000 |" in text
    assert "over 2 (tvm: 1) training seed(s)" in text
