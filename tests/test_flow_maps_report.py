"""benchmarks/flow_maps_report.py: trials become rows by method, a run trained from a teacher is its own distilled
row, and rows come in the report's order with seeds averaged in seed order."""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import flow_maps_report as report  # noqa: E402


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
    import torch

    from imm.config import load_config
    from imm.data import load_data

    heldout = load_data(load_config("digits", []).data).heldout

    class Exact:  # samples the held-out digits themselves, blurred by noise that grows with the seed
        def sample(self, n, steps, seed):
            g = torch.Generator().manual_seed(seed)
            return heldout[torch.randint(len(heldout), (n,), generator=g)] + (seed - 999) * 0.1 * torch.randn(
                (n, *heldout.shape[1:]), generator=g)

    draws = report.redrawn(Exact(), heldout, 500, draws=3)
    assert len(draws) == 3 and draws[0] < draws[1] < draws[2]
    res = {"tvm": {**report.table([run("tvm", 0, 0.1)], {"tvm-0-0.1": {"method": "tvm"}})["tvm"],
                   "redrawn/steps_2": [[0.01, 0.013, 0.011], [0.02, 0.02, 0.02]]}}
    assert "| tvm | 0.0157 ± 0.0087 | 0.0030 |" in report.markdown(res, ["tvm"])
