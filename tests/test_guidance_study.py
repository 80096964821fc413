"""The guidance study at toy size: one training serves every sampling-time scale (IMM), a trained-in scale is a
training of its own (MeanFlow), and each row is the digits classifier's reading of the samples."""

import json

from benchmarks.studies import guidance_digits as study


def test_the_guidance_study_scores_each_scale_of_each_method(tmp_path):
    code = study.main(["--methods", "imm", "meanflow", "--scales", "1", "3", "--seeds", "1", "--budget", "30",
                       "--workers", "1", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted((r["method"], r["scale"], r["steps"]) for r in results) == \
        [(m, w, k) for m in ("imm", "meanflow") for w in (1.0, 3.0) for k in (1, 2)]
    assert all(0 <= r["accuracy"] <= 1 and r["fd"] > 0 for r in results)
    imm = {(r["scale"], r["steps"]): r for r in results if r["method"] == "imm"}
    assert imm[1.0, 1]["train_s"] == imm[3.0, 1]["train_s"]  # one IMM training, sampled at both scales
    assert imm[1.0, 1]["fd"] != imm[3.0, 1]["fd"]  # and the scale reached the sampler
    meanflow = {r["scale"]: r["train_s"] for r in results if r["method"] == "meanflow"}
    assert meanflow[1.0] != meanflow[3.0]  # a training per trained-in scale
    table = (tmp_path / "out" / "tables.md").read_text()
    assert "| imm | 3 |" in table and "| meanflow | 1 |" in table and "held-out accuracy on real digits: 0.9" in table
