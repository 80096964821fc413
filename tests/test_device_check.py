"""benchmarks/device_check.py, the one-command GPU check, at toy size on this CPU: every section reports
finite numbers into the JSON, and a section cut at its time limit still leaves the JSON of what was measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.py"


def _numbers(d):
    for v in d.values():
        if isinstance(v, dict):
            yield from _numbers(v)
        elif isinstance(v, float):
            yield v


@pytest.mark.slow
def test_the_smoke_run_reports_every_section(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    for section in ("cuda_tests", "gpu_step", "mfu", "train", "sampling", "separation"):
        assert "error" not in report[section], report[section]
        assert all(math.isfinite(v) for v in _numbers(report[section])), report[section]
    assert report["cuda_tests"]["returncode"] == 0 and "passed" in report["cuda_tests"]["summary"]
    assert report["train"]["loss_finite"] and report["train"]["skipped_steps"] == 0 and report["train"]["steps"] > 0
    assert report["mfu"]["dit_b2"]["gflop_per_step"] > 0 and 0 < report["mfu"]["dit_b2_mfu"] < 1
    # the measurement the bf16 floor rests on, as the CPU test has it: no floor fails, bf16's floor separates
    assert report["separation"]["ddpmpp bf16 delta=0.0"] > 1 > report["separation"]["ddpmpp bf16 delta=0.001"]
    assert set(report["targets"]) == {"fast_over_eager", "imm_over_fm_step", "dit_b2_mfu", "imm1_over_fm64",
                                      "train_loss_finite", "cuda_tests_pass"}


def test_a_section_cut_at_its_limit_still_leaves_the_json(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path), "--sections", "train",
                          "sampling", "--limit", "0.5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["train"] == {"error": "cut at its 0.5s limit"} and report["sampling"]["error"].startswith("cut at")
    assert report["targets"]["train_loss_finite"]["met"] is None  # not measured, not failed
