"""What the studies share: a config trained in this process to its EMA model, a model's quality as the energy
distance of its samples to held-out data, and the rule for when one score is no higher than another.

The steps study (steps_study.py) and its follow-ups, the 2D suite (suite2d.py) and the restart studies
(restart_bias.py, restart_grids.py) import these as `from benchmarks.studies.common import ...`. torch and imm are
imported where they are used, so that importing this module is cheap.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path


def train_ema(cfg) -> dict:
    """Train `cfg` in this process on the CPU (from train.teacher where it names one): its last checkpoint's EMA
    weights, sigma_d and data_shape, and the training time (train_s)."""
    import torch

    from imm.trained import load_trained
    from imm.training.loop import CHECKPOINT_FILE, train_loop

    box = {}

    def keep(metrics, checkpoint_dir):
        if checkpoint_dir:
            box["state"] = torch.load(os.path.join(checkpoint_dir, CHECKPOINT_FILE), weights_only=True)

    t0 = time.perf_counter()
    train_loop(cfg, device="cpu", report=keep, teacher=load_trained(cfg.train.teacher) if cfg.train.teacher else None)
    return {k: box["state"][k] for k in ("ema", "sigma_d", "data_shape")} | {"train_s": time.perf_counter() - t0}


def quality(model, cfg, sampler: str, k: int, n: int, shape, heldout, seeds=(0, 1)) -> float:
    """Energy distance to the held-out set, averaged over two noise seeds (the same seeds for every step count)."""
    from imm.metrics import energy_distance
    from imm.sampling import generate

    return sum(energy_distance(generate(model, cfg, n, k, sampler=sampler, seed=s, data_shape=shape), heldout)
               for s in seeds) / len(seeds)


def within(mean: list[float], spread: list[float], a: int, b: int, noise: float = 0.0) -> bool:
    """Score b no higher than score a beyond what tells them apart: the larger of their seed spreads and the
    metric's noise floor (a few seeds' spread alone can be far below what the metric resolves)."""
    return mean[b] <= mean[a] + max(spread[a], spread[b], noise)


def mean_spread(values: list[float], fmt: str = "{:.4f}") -> str:
    """A table cell: the mean over seeds ± half their range."""
    spread = (max(values) - min(values)) / 2
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(spread)}"


def publish(out: Path, results: list[dict], text: str) -> None:
    """A study's report: results.json and tables.md (`text`) under `out`, and the text on the terminal."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "tables.md").write_text(text)
    print(text)
