"""benchmarks/reports/flow_maps_report.py: trials become rows by method, a run trained from a teacher is its own distilled
row, and rows come in the report's order with seeds averaged in seed order."""

from types import SimpleNamespace

import pytest

from benchmarks.reports import flow_maps_report as report


def run(method: str, seed: int, energy2: float, teacher: str | None = None, **params):
    tags = {"imm.teacher": teacher} if teacher else {}
    metrics = {"energy/steps_2": energy2}
    return SimpleNamespace(info=SimpleNamespace(run_id=f"{method}-{seed}-{energy2}"),
                           data=SimpleNamespace(params={"method": method, "train.seed": str(seed), **params},
                                                tags=tags, metrics=metrics))


def test_rows_by_method_and_teacher():
    runs = [run("tvm", 1, 0.3, "models:/t@teacher"), run("fm", 0, 0.9), run("tvm", 1, 0.2), run("tvm", 0, 0.1),
            run("tvm", 0, 0.4, "models:/t@teacher"), run("imm", 0, 0.5),
            run("fmm", 0, 0.6, "models:/t@teacher", **{"fmm.objective": "eulerian"}),
            run("fmm", 0, 0.7, "models:/t@teacher", **{"fmm.objective": "lagrangian", "fmm.anchor": "True"}),
            run("meanflow", 0, 0.8, **{"meanflow.tangent": "model", "eval.n_samples": "5000"}),
            run("meanflow", 0, 0.9, **{"meanflow.tangent": "data"})]
    res = report.table(runs, {r.info.run_id: r.data.params for r in runs})  # the test's params are whole configs
    assert set(res) == {"imm", "tvm", "tvm (distilled)", "fm", "fmm eulerian, no anchor (distilled)",
                        "fmm lagrangian (distilled)", "meanflow", "imf"}
    assert res["tvm"]["energy/steps_2"] == [0.1, 0.2] and res["tvm"]["seeds"] == [0, 1]
    assert res["tvm (distilled)"]["energy/steps_2"] == [0.4, 0.3]
    assert res["tvm (distilled)"]["run_ids"] == ["tvm-0-0.4", "tvm-1-0.3"]
    assert res["imf"]["energy/steps_2"] == [0.8] and res["imf"]["n_samples"] == 5000
    assert res["meanflow"]["n_samples"] == report.DIGITS_N_SAMPLES  # recorded without the key: digits' own
    assert sorted(res, key=lambda r: (report.rank(r), r)) == [
        "imm", "meanflow", "imf", "tvm", "tvm (distilled)", "fmm eulerian, no anchor (distilled)",
        "fmm lagrangian (distilled)", "fm"]
    assert report.file_stem("fmm eulerian, no anchor (distilled)") == "fmm_eulerian_no_anchor_distilled"
    assert report.cell([0.1, 0.2]) == "0.1500 ± 0.1000"


def test_kept_rows_are_marked_with_their_sample_count():
    res = report.table([run("tvm", 0, 0.1, **{"eval.n_samples": "5000"})],
                       {"tvm-0-0.1": {"method": "tvm", "eval.n_samples": "5000"}})
    res["cm"] = {**report.table([run("cm", 0, 0.5)], {"cm-0-0.5": {"method": "cm"}})["cm"], "kept": True}
    text = report.markdown(res, ["tvm", "cm"])
    assert "| cm * | " in text and "| tvm | " in text
    assert "scored with [1000] samples" in text
    assert "kept" not in report.markdown({"tvm": res["tvm"]}, ["tvm"])


def test_each_model_is_scored_again_on_fresh_sample_draws():
    """Each draw is the run's evaluation on its own seeds (none shared: a draw's 10 batches take seeds s to s + 9);
    the table shows the mean over seeds of each model's mean, and one model's draw-to-draw spread, per metric."""
    import torch

    asked = []

    train = torch.tensor([[0.0, 0.0], [3.0, 4.0]])

    def evaluator(model, steps, seed):  # what imm.metrics.evaluator.Evaluator returns, 0.001 worse per draw
        asked.append((model, steps, seed))
        i = len(asked)
        return SimpleNamespace(metrics={"energy/steps_2": 0.01 + 0.001 * i, "fd/steps_2": 1.0 + 0.1 * i},
                               samples={2: torch.tensor([[0.0, i], [3.0, 4.0 + i]])})

    draws = report.redrawn(evaluator, "model", train, draws=3)
    assert draws["energy"] == pytest.approx([0.011, 0.012, 0.013]) and draws["fd"] == pytest.approx([1.1, 1.2, 1.3])
    assert draws["copying"] == pytest.approx([1.0, 2.0, 3.0])  # each sample's distance to its nearest training point
    seeds = [seed for _, _, seed in asked]
    assert all(steps == [2] and model == "model" for model, steps, _ in asked)
    assert min(abs(a - b) for a in seeds for b in seeds if a != b) >= 10  # 5000 samples: 10 batch seeds a draw
    res = {"tvm": {**report.table([run("tvm", 0, 0.1)], {"tvm-0-0.1": {"method": "tvm"}})["tvm"],
                   "redrawn/energy/steps_2": [[0.01, 0.013, 0.011], [0.02, 0.02, 0.02]],
                   "redrawn/fd/steps_2": [[1.0, 1.5, 1.2], [2.0, 2.0, 2.0]],
                   "redrawn/copying/steps_2": [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]]}}
    teacher = report.teacher_scores(lambda model, steps, seed: SimpleNamespace(
        metrics={f"{m}/steps_{k}": 0.1 * k for m in ("energy", "fd") for k in steps},
        samples={k: torch.tensor([[3.0, 4.0 + k]]) for k in steps}), "teacher", train, steps=(32, 128))
    assert teacher == pytest.approx({"energy/steps_32": 3.2, "energy/steps_128": 12.8, "fd/steps_32": 3.2,
                                     "fd/steps_128": 12.8, "copying/steps_32": 32.0, "copying/steps_128": 128.0})
    text = report.markdown(res, ["tvm"], heldout_copying=2.15, teachers={"models:/t@teacher": teacher})
    assert "| tvm | 0.0157 ± 0.0087 | 0.0030 | 1.62 ± 0.77 | 0.5000 | 1.50 ± 1.00 |" in text
    assert "the held-out digits' own: 2.15" in text
    assert "**The teacher** (models:/t@teacher; one draw) at 32 and 128 steps: energy 3.20 and 12.80" in text


def test_a_warm_started_student_is_its_own_row():
    runs = [run("tvm", 0, 0.1, "models:/t@teacher"), run("tvm", 0, 0.2, "models:/t@teacher"), run("tvm", 0, 0.3)]
    configs = {runs[0].info.run_id: {"method": "tvm", "train.init_from": "None"},
               runs[1].info.run_id: {"method": "tvm", "train.init_from": "models:/t@teacher"},
               runs[2].info.run_id: {"method": "tvm"}}
    assert set(report.table(runs, configs)) == {"tvm", "tvm (distilled)", "tvm (distilled, warm-started)"}
    assert report.file_stem("tvm (distilled, warm-started)") == "tvm_distilled_warm_started"
