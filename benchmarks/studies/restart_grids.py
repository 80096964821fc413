"""Which time grid should IMM's restart sampler use in 2D (issue 29)? Trains the shipped toy2d IMM on three sets of
the 2D suite's tuning half and on one held-out set (grid, where the uniform grid rose at 8 steps), 2 seeds each, and
scores restart at 2, 4 and 8 steps on every schedule of imm.sampling.SCHEDULES against 5000 held-out points.

    .venv/bin/python -m benchmarks.studies.restart_grids    # about 6 min on 2 cores; models cached under --cache

Writes restart_grids.md and restart_grids.png to --out (default docs/results/restart_grids).
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from benchmarks.studies.common import quality, train_ema
from benchmarks.studies.suite2d import job_config

TUNING_SETS = ("8gaussians", "checkerboard", "moons")  # the tuning half's sets the steps study also trains on
HELDOUT_SET = "grid"
SEEDS = (0, 1)
STEPS = (2, 4, 8)
N_EVAL = 5000


def config(name: str, seed: int):
    """The shipped toy2d IMM on `name`, as the held-out suite trains it, with N_EVAL held-out points."""
    return job_config("imm", name, seed, n_heldout=N_EVAL)


def train(name: str, seed: int, cache: str) -> str:
    """The EMA model of toy2d on `name`, trained once (one thread) and kept under `cache`."""
    torch.set_num_threads(1)
    path = Path(cache) / f"{name}-seed{seed}.pt"
    if not path.is_file():
        torch.save(train_ema(config(name, seed)), path)
    return str(path)


def scores(name: str, seed: int, path: str) -> dict[str, list[float]]:
    """{schedule: restart's energy at each of STEPS} for one trained model."""
    from omegaconf import OmegaConf

    from imm.data import load_data
    from imm.methods import build_model
    from imm.sampling import SCHEDULES

    cfg, state = config(name, seed), torch.load(path, weights_only=True)
    model = build_model(cfg, tuple(state["data_shape"]), state["sigma_d"])
    model.load_state_dict(state["ema"])
    model.eval()
    heldout = load_data(cfg.data).heldout
    return {g: [quality(model, OmegaConf.merge(cfg, {"imm": {"schedule": g}}), "restart", k, N_EVAL, (2,),
                        heldout) for k in STEPS] for g in SCHEDULES}


def main(argv: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="imm-runs/restart_grids")
    ap.add_argument("--out", type=Path, default=Path("docs/results/restart_grids"))
    args = ap.parse_args(argv)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    sets = (*TUNING_SETS, HELDOUT_SET)
    jobs = [(s, seed) for s in sets for seed in SEEDS]
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        paths = list(pool.map(train, *zip(*jobs, strict=True), [args.cache] * len(jobs)))
        got = list(pool.map(scores, *zip(*jobs, strict=True), paths))
    runs: dict[str, dict[str, list[list[float]]]] = {}  # set -> schedule -> per-seed scores
    for (s, _), res in zip(jobs, got, strict=True):
        for g, e in res.items():
            runs.setdefault(s, {}).setdefault(g, []).append(e)
    lines = ["# Restart's time grid in 2D", "",
             f"Energy distance of restart samples to {N_EVAL} held-out points (2 sampling seeds) at 2, 4, 8 steps, "
             f"mean ± spread over {len(SEEDS)} training seeds of the shipped toy2d IMM; written by "
             "`python -m benchmarks.studies.restart_grids`.", "",
             "| set | half | " + " | ".join(runs[sets[0]]) + " |", "|---|---|" + "---|" * len(runs[sets[0]])]
    for s in sets:
        cells = []
        for per_seed in runs[s].values():
            cols = list(zip(*per_seed, strict=True))
            cells.append(" / ".join(f"{statistics.fmean(c):.4f}" for c in cols)
                         + f" (± {max(max(c) - min(c) for c in cols):.4f})")
        lines.append(f"| {s} | {'held out' if s == HELDOUT_SET else 'tuning'} | " + " | ".join(cells) + " |")
    tuning_mean = {g: [statistics.fmean(statistics.fmean(seed[i] for seed in runs[s][g]) for s in TUNING_SETS)
                       for i in range(len(STEPS))] for g in runs[sets[0]]}
    lines.append("| **tuning mean** | | " + " | ".join(" / ".join(f"**{v:.4f}**" for v in m)
                                                      for m in tuning_mean.values()) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "restart_grids.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(sets), figsize=(3.4 * len(sets), 3.0), squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        for g, per_seed in runs[s].items():
            ax.plot(STEPS, [statistics.fmean(c) for c in zip(*per_seed, strict=True)], marker="o", ms=3, label=g)
        ax.set(xscale="log", title=f"{s} ({'held out' if s == HELDOUT_SET else 'tuning'})", xlabel="restart steps",
               ylabel="energy distance")
        ax.set_xticks(STEPS, [str(k) for k in STEPS])
        ax.minorticks_off()
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "restart_grids.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
