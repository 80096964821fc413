"""Can a pruner trust an early evaluation? The rank correlation of trials at 10% of their budget against their final
ranking, with the EMA as configured and with EDM's ramp-up (`train.ema_rampup`), on sklearn's digits (issue 29).

Every evaluation samples the EMA. With a fixed decay an early one samples an average still heavy with the first
steps' weights (digits' 0.998 keeps 0.998^300 = 55% of it on the weights of step 1 at step 300), so what an ASHA rung
ranks is partly the initialisation. The ramp-up keeps the EMA's half-life below `ratio` of the steps so far.

Each trial is a draw of digits' sweep axes (group size, mapping decrement k, weighting, learning rate), trained twice
(the ramp-up off and on; training itself is the same, only the EMA differs) with an evaluation at 10% of the budget
and at its end. Spearman's rho of the early ranking against the final one, per variant:

    .venv/bin/python -m benchmarks.studies.ema_ranking --out docs/results/ema_ranking/ema_ranking.json
                                                              # 8 trials x 2 of 3000 steps: ~10 min on 2 cores
    .venv/bin/python -m benchmarks.studies.ema_ranking --trials 3 --steps 200   # a smoke run (writes no file)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

METRIC = "energy/steps_2"
RAMPUP = 0.05  # EDM's ema_rampup_ratio


def draws(n: int, seed: int = 0) -> list[list[str]]:
    """n trials' overrides over digits' sweep axes, drawn at random (the same for both variants)."""
    rng = random.Random(seed)
    return [[f"imm.group_size={rng.choice([2, 4, 8])}", f"imm.k={rng.randint(8, 14)}",
             f"imm.weighting={rng.choice(['sigmoid', 'constant'])}", f"train.lr={rng.choice([3e-4, 1e-3, 3e-3])}"]
            for _ in range(n)]


def run(overrides: list[str], steps: int, rampup: float, eval_samples: int = 1000) -> dict:
    """The trial's METRIC at every tenth of `steps` ("by_step"), the first of them "early" and the last "final"."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one trial per core
    from imm.config import load_config
    from imm.training.loop import train_loop

    early = max(steps // 10, 1)
    cfg = load_config("digits", overrides + [f"train.steps={steps}", f"eval.every={early}", "eval.steps=[2]",
                                             f"train.checkpoint_every={steps}", f"train.ema_rampup={rampup}",
                                             f"eval.n_samples={eval_samples}"])
    seen: dict[int, float] = {}

    def report(metrics, checkpoint_dir):
        if METRIC in metrics:
            seen[int(metrics["step"])] = float(metrics[METRIC])

    try:
        train_loop(cfg, device="cpu", report=report)
    finally:
        torch.set_num_threads(threads)
    first, last = min(seen), max(seen)
    return {"early": seen[first], "final": seen[last], "early_step": first, "final_step": last,
            "by_step": {str(k): seen[k] for k in sorted(seen)}}


def ranks(x: list[float]) -> list[float]:
    """Ranks from 0, ties averaged."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va and vb else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3000, help="each trial's budget (the digits sweeps' 3000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--eval-samples", type=int, default=1000, help="samples per evaluation (digits' 1000)")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the results as JSON here (the published ones: docs/results/ema_ranking/ema_ranking.json)")
    args = ap.parse_args(argv)
    trials = draws(args.trials)
    jobs = [(t, args.steps, r, args.eval_samples) for r in (0.0, RAMPUP) for t in trials]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run, *zip(*jobs, strict=True)))
    else:
        results = [run(*job) for job in jobs]
    n = len(trials)
    table = {"fixed": results[:n], "rampup": results[n:]}
    rho = {k: spearman([r["early"] for r in v], [r["final"] for r in v]) for k, v in table.items()}
    print(f"{n} digits trials of {args.steps} steps, {METRIC} at step {results[0]['early_step']} against step "
          f"{results[0]['final_step']}")
    print(f"{'trial':<62} {'fixed early':>11} {'final':>8} {'ramp early':>11} {'final':>8}")
    for t, f, r in zip(trials, table["fixed"], table["rampup"], strict=True):
        print(f"{' '.join(t):<62} {f['early']:>11.4f} {f['final']:>8.4f} {r['early']:>11.4f} {r['final']:>8.4f}")
    print(f"Spearman rho, early vs final ranking: fixed EMA {rho['fixed']:.3f}, EMA ramp-up {RAMPUP} {rho['rampup']:.3f}")
    cross = spearman([r["early"] for r in table["rampup"]], [r["final"] for r in table["fixed"]])
    print(f"ramp-up early vs fixed final ranking: {cross:.3f}")
    at = {k: {v: spearman([r["by_step"][step] for r in table[v]], [r["final"] for r in table[v]]) for v in table}
          for k, step in enumerate(list(results[0]["by_step"])[:-1], start=1)}
    print("rho at each tenth of the budget: " + ", ".join(
        f"{10 * k}% {a['fixed']:.2f} / {a['rampup']:.2f}" for k, a in at.items()) + " (fixed / ramp-up)")
    if args.out:
        args.out.write_text(json.dumps({"trials": trials, "steps": args.steps, "rampup": RAMPUP, "metric": METRIC,
                                        "results": table, "spearman": rho, "rampup_early_vs_fixed_final": cross,
                                        "spearman_by_tenth": at},
                                       indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
