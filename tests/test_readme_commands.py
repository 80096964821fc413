"""The README's two commands, exactly as written, in a fresh clone of this repository (its committed HEAD).

In the suite this runs `make demo` only: `make test` inside `make test` would recurse. IMM_README_ALL=1 runs
both (the nested suite skips this test), which is what a new user does on a fresh machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
NESTED = "IMM_README_NESTED"


def readme_commands() -> list[str]:
    """The commands of the first bash block under '## Two commands', without their comments."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def clean_env(tmp_path: Path) -> dict[str, str]:
    """This machine's environment less what the test session set up (S3 endpoints, caches, the active venv)."""
    drop = ("AWS_", "MLFLOW_", "IMM_", "RAY_", "PYTEST_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix))
    env["IMM_CACHE"] = str(tmp_path / "cache")  # keep the user's ~/.cache/imm out of it
    env[NESTED] = "1"
    return env


def occupied_modes(x, radius: float = 0.25, share: float = 0.05) -> int:
    """How many of the 8 Gaussians (on the circle of radius 2) hold at least `share` of the samples within
    `radius` of their centre: 8 when the modes are separated and all covered, none for a ring (4% of it lies
    that near each centre), fewer for a collapse."""
    angles = np.arange(8) * np.pi / 4
    centres = 2 * np.stack([np.cos(angles), np.sin(angles)], 1)
    near = np.linalg.norm(x[:, None, :] - centres[None], axis=-1) < radius
    return int((near.mean(0) >= share).sum())


def test_mode_count_tells_separated_modes_from_a_ring():
    rng = np.random.default_rng(0)
    angles = rng.integers(0, 8, 5000) * np.pi / 4
    modes = 2 * np.stack([np.cos(angles), np.sin(angles)], 1) + 0.1 * rng.standard_normal((5000, 2))
    ring = 2 * np.stack([np.cos(t := rng.uniform(0, 2 * np.pi, 5000)), np.sin(t)], 1)
    assert occupied_modes(modes) == 8 and occupied_modes(ring) == 0 and occupied_modes(modes[angles < 3]) == 4


def test_readme_names_the_two_commands():
    assert readme_commands() == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command


@pytest.mark.skipif(bool(os.environ.get(NESTED)), reason="already inside a README-commands run")
def test_the_two_commands_work_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    commands = readme_commands()
    if not os.environ.get("IMM_README_ALL"):
        commands = [c for c in commands if c != "make test"]
    env = clean_env(tmp_path)
    for command in commands:
        t0 = time.perf_counter()
        proc = subprocess.run(command, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        print(f"\n$ {command}  ({wall:.0f}s)\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        assert proc.returncode == 0, f"{command!r} failed"
        if command == "make demo":
            out = proc.stdout
            # progress all the way: the set-up, each stage, each trial
            for line in ("== setting up .venv", "== 1/3 sweep", "== 2/3 promote", "== 3/3 sample",
                         "trial 7 "):
                assert line in out
            assert "model uri: models:/toy2d_smoke@champion" in out
            # Our progress and results only; Ray's and MLflow's own lines are in imm-runs/logs/
            markers = ("core_worker.cc", "placement_group_cleaner", "raylet", "authentication_token", "Traceback")
            noise = [ln for ln in (out + proc.stderr).splitlines() if any(m in ln for m in markers)]
            assert not noise, noise[:5]
            assert ".venv/bin/imm-orch ui" in out  # the command that opens the MLflow UI
            for png in ("champion_1steps.png", "champion_2steps.png", "champion_4steps.png"):
                assert (clone / "imm-runs" / "demo" / png).stat().st_size > 10_000
            assert (clone / "imm-runs" / "mlflow.db").is_file() and (clone / "imm-runs" / "optuna.journal").is_file()
            # The champion shows the method working: the 8 modes of the mixture, each holding samples
            npy = tmp_path / "champion_2steps.npy"
            subprocess.run([str(clone / ".venv" / "bin" / "imm-orch"), "sample", "--model", "models:/toy2d_smoke@champion",
                            "--steps", "2", "--n", "5000", "--out", str(npy)], cwd=clone, env=env, check=True)
            assert occupied_modes(np.load(npy)) == 8
            # The sweep's own best trial does too (its row of the sweep's sample grid)
            from orchestrator.track import tracking

            mlc = tracking.client(f"sqlite:///{clone / 'imm-runs' / 'mlflow.db'}")
            (parent,) = [r for r in mlc.search_runs([mlc.get_experiment_by_name("imm").experiment_id])
                         if r.data.tags.get("imm.sweep.role") == "parent"]
            best = tmp_path / "best_trial_2steps.npy"
            subprocess.run([str(clone / ".venv" / "bin" / "imm-orch"), "sample", "--model",
                            f"runs:/{parent.data.tags['best.run_id']}", "--steps", "2", "--n", "5000", "--out", str(best)],
                           cwd=clone, env=env, check=True)
            assert occupied_modes(np.load(best)) == 8
