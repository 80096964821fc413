"""Would a pruner have stopped the eventual winner? Full-budget learning curves of a sweep's trials, then each
pruner's decisions replayed on them (issue 44).

TRAIN. Each set is one sweep's worth of trials: the sweep file's enqueued trials, then random draws from its space
(a seed per set), every trial trained to the sweep's full budget with the objective evaluated every `--every` steps.
No trial is pruned. `toy2d` is the demo's sweep (`sweeps/toy2d_smoke.yaml`); digits reuses the learning curves of
`benchmarks/studies/ema_ranking.py` (8 trials of digits' sweep axes, 3000 steps, an evaluation every 300).

REPLAY. A pruner sees the curves as a sweep would show them: the trials in a random order (`--orders` of them per
set), one at a time, each reporting its curve step by step into an in-memory Optuna study with that pruner and
stopped where it says so. Per pruner:

    best pruned    how often the set's eventual best trial (by its final value) is stopped
    top-3 pruned   how often any of the three best is stopped
    steps          the steps trained, as a share of training every trial to the end

The toy2d sets each start with the sweep's enqueued trial (the shipped config, the same curve in each and the best
of each), so toy2d is also replayed on the random draws alone.

    .venv/bin/python -m benchmarks.studies.pruning train --out docs/results/pruning/toy2d_curves.json
                                                       # 3 sets x 8 toy2d trials of 3000 steps: ~25 min on 2 cores
    .venv/bin/python -m benchmarks.studies.pruning replay [--out docs/results/pruning/replay.json]   # seconds
    .venv/bin/python -m benchmarks.studies.pruning train --sets 1 --trials 2 --steps 300 --every 100 --out /tmp/c.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
CURVES = RESULTS / "pruning" / "toy2d_curves.json"
DIGITS = RESULTS / "ema_ranking" / "ema_ranking.json"
SWEEP = "toy2d_smoke"


def draws(sweep, n: int, seed: int) -> list[dict]:
    """The sweep's enqueued trials, then random draws from its space (the sweep's own `suggest`), n in all."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = [dict(e) for e in sweep.spec.enqueue][:n]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    while len(chosen) < n:
        values = sweep.suggest(study.ask())
        if values not in chosen:
            chosen.append(values)
    return chosen


def curve(sweep_file: str, values: dict, steps: int | None, every: int) -> dict[str, float]:
    """The objective's value at every `every` steps of one trial trained to the end (one core)."""
    import torch

    torch.set_num_threads(1)
    from omegaconf import OmegaConf

    from imm.training.loop import train_loop
    from orchestrator.sweep.spec import load_sweep

    sweep = load_sweep(sweep_file)
    cfg = sweep.trial_config(values)
    OmegaConf.update(cfg, "eval.every", every)
    if steps:
        OmegaConf.update(cfg, "train.steps", steps)
    OmegaConf.update(cfg, "train.checkpoint_every", int(cfg.train.steps))
    metric = sweep.metrics[0]
    seen: dict[str, float] = {}

    def report(metrics, checkpoint_dir):
        if metric in metrics:
            seen[str(int(metrics["step"]))] = float(metrics[metric])

    with tempfile.TemporaryDirectory(prefix="imm-pruning-") as out:
        OmegaConf.update(cfg, "train.out_dir", out)
        train_loop(cfg, device="cpu", report=report)
    return seen


def noise(sweep_file: str) -> float:
    """The objective's noise floor at the sweep's evaluation size (imm.metrics.noise_floor)."""
    from imm.data import load_data
    from imm.data.toy2d import TOY_SETS
    from imm.metrics import noise_floor
    from orchestrator.sweep.spec import load_sweep

    cfg = load_sweep(sweep_file).base
    return noise_floor(TOY_SETS[cfg.data.name], load_data(cfg.data).heldout, int(cfg.eval.n_samples))


def train(args) -> int:
    from orchestrator.sweep.spec import load_sweep

    sweep = load_sweep(args.sweep)
    sets = [draws(sweep, args.trials, seed) for seed in range(args.sets)]
    jobs = [(args.sweep, v, args.steps, args.every) for s in sets for v in s]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(curve, *zip(*jobs, strict=True)))
    out = {"sweep": args.sweep, "metric": sweep.metrics[0], "noise_floor": noise(args.sweep), "sets": []}
    it = iter(results)
    for s in sets:
        out["sets"].append([{"params": v, "by_step": next(it)} for v in s])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}: {len(jobs)} curves, noise floor {out['noise_floor']:.4f}")
    return 0


def digits_noise(n: int = 1000) -> float:
    """Digits' noise floor at its evaluation size: draws of the training images scored against the held-out ones
    (the set is finite, so this is the spread of a model that reproduces the training set)."""
    import torch

    from imm.config import load_config
    from imm.data import load_data
    from imm.metrics import noise_floor

    data = load_data(load_config("digits").data)

    def draw(k: int, g: torch.Generator):
        return data.train[torch.randint(len(data.train), (k,), generator=g)]

    return noise_floor(draw, data.heldout, n)


def candidates(budget: int, floor: float) -> dict[str, Callable]:
    """The pruners compared, their rungs as shares of the budget: the demo's ASHA (first rung at 1/6 of it), later
    rungs, the median rule, Hyperband, and Optuna's PatientPruner around ASHA and the median rule, which lets the
    inner pruner decide only once a trial has stopped improving by more than the metric's noise floor."""
    import optuna

    P = optuna.pruners
    sixth, half = budget // 6, budget // 2
    return {
        "none": P.NopPruner,
        "asha from 1/6, x3 (the demo's)": lambda: P.SuccessiveHalvingPruner(min_resource=sixth, reduction_factor=3),
        "asha from 1/2, x3": lambda: P.SuccessiveHalvingPruner(min_resource=half, reduction_factor=3),
        "asha from 1/2, x2": lambda: P.SuccessiveHalvingPruner(min_resource=half, reduction_factor=2),
        "asha from 2/3, x2": lambda: P.SuccessiveHalvingPruner(min_resource=2 * budget // 3, reduction_factor=2),
        "hyperband from 1/6, x3": lambda: P.HyperbandPruner(min_resource=sixth, max_resource=budget,
                                                              reduction_factor=3),
        "median from 1/6": lambda: P.MedianPruner(n_startup_trials=2, n_warmup_steps=sixth - 1),
        "median from 1/2": lambda: P.MedianPruner(n_startup_trials=2, n_warmup_steps=half - 1),
        "patient asha from 1/6, x3": lambda: P.PatientPruner(
            P.SuccessiveHalvingPruner(min_resource=sixth, reduction_factor=3), patience=1, min_delta=floor),
        "patient median from 1/6": lambda: P.PatientPruner(
            P.MedianPruner(n_startup_trials=2, n_warmup_steps=sixth - 1), patience=1, min_delta=floor),
        "patient asha from 1/2, x3": lambda: P.PatientPruner(
            P.SuccessiveHalvingPruner(min_resource=half, reduction_factor=3), patience=1, min_delta=floor),
    }


def replay_order(curves: list[dict[int, float]], order: list[int], pruner, concurrency: int) -> dict[int, int]:
    """Each trial's last step trained when `pruner` judges the curves, `concurrency` trials at a time advancing
    in step (a trial starts when one ends), in `order`."""
    import optuna

    # a fixed name: Hyperband puts a trial in a bracket by a hash of the study's name and the trial's number
    study = optuna.create_study(study_name="replay", pruner=pruner)
    queue, active, trained = list(order), [], {}
    while queue or active:
        while queue and len(active) < concurrency:
            i = queue.pop(0)
            active.append((i, study.ask(), iter(sorted(curves[i]))))
        for entry in list(active):
            i, trial, steps = entry
            step = next(steps, None)
            if step is None:
                study.tell(trial, curves[i][trained[i]])
                active.remove(entry)
                continue
            trial.report(curves[i][step], step)
            trained[i] = step
            if step < max(curves[i]) and trial.should_prune():  # as the driver: a trial at its last step completes
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                active.remove(entry)
    return trained


LAST = 3  # a trial's final quality: the mean of its last three evaluations (one evaluation's noise is larger
#            than the differences between the best trials)


def final_value(curve: dict[int, float]) -> float:
    last = sorted(curve)[-LAST:]
    return sum(curve[s] for s in last) / len(last)


def judge(sets: list[list[dict[int, float]]], budget: int, floor: float, orders: int, concurrency: int) -> dict:
    """Per candidate pruner, over (set, order) replays: the share that stopped the set's best trial, and any of its
    best three; the regret (the best finished trial's final value minus the best's, the mean) and the share whose
    regret exceeds the noise floor; the steps trained as a share of the full budget of every trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # PatientPruner
    out = {}
    for name, make in candidates(budget, floor).items():
        best = top3 = replays = lost = 0
        regret = 0.0
        trained_steps = full_steps = 0
        for k, curves in enumerate(sets):
            final = [final_value(c) for c in curves]
            ranked = sorted(range(len(curves)), key=final.__getitem__)
            rng = random.Random(k)
            for _ in range(orders):
                order = rng.sample(range(len(curves)), len(curves))
                trained = replay_order(curves, order, make(), concurrency)
                stopped = {i for i, c in enumerate(curves) if trained[i] < max(c)}
                best += ranked[0] in stopped
                top3 += bool(stopped & set(ranked[:3]))
                found = min(final[i] for i in range(len(curves)) if i not in stopped) - final[ranked[0]]
                regret += found
                lost += found > floor
                trained_steps += sum(trained.values())
                full_steps += sum(max(c) for c in curves)
                replays += 1
        out[name] = {"best_pruned": best / replays, "top3_pruned": top3 / replays, "regret": regret / replays,
                     "regret_over_noise": lost / replays, "steps": trained_steps / full_steps}
    return out


def replay(args) -> int:
    stored = json.loads(args.curves.read_text())
    toy = [[{int(s): v for s, v in t["by_step"].items()} for t in one] for one in stored["sets"]]
    digits_runs = json.loads(DIGITS.read_text())
    digits = [[{int(s): v for s, v in r["by_step"].items()} for r in digits_runs["results"]["fixed"]]]
    # Each set starts with the sweep's enqueued trial (the shipped config), the same curve in every set and its
    # best: the sets of random draws alone have a best of their own each.
    from orchestrator.sweep.spec import load_sweep

    enqueued = len(load_sweep(stored["sweep"]).spec.enqueue)
    draws_only = [one[enqueued:] for one in toy]
    studies = {
        f"toy2d ({stored['sweep']}, {len(toy)} sets of {len(toy[0])})":
            (toy, max(toy[0][0]), stored["noise_floor"]),
        f"toy2d, random draws only ({len(toy)} sets of {len(draws_only[0])})":
            (draws_only, max(toy[0][0]), stored["noise_floor"]),
        f"digits (ema_ranking, 1 set of {len(digits[0])})": (digits, max(digits[0][0]), digits_noise()),
    }
    table = {}
    for title, (sets, budget, floor) in studies.items():
        res = judge(sets, budget, floor, args.orders, args.concurrency)
        table[title] = {"budget": budget, "noise_floor": floor, "pruners": res}
        print(f"\n{title}: budget {budget} steps, noise floor {floor:.4f}, {args.orders} orders per set, "
              f"{args.concurrency} at a time")
        print("| pruner | best pruned | top-3 pruned | regret | regret > noise | steps |\n|---|---|---|---|---|---|")
        for name, r in res.items():
            print(f"| {name} | {r['best_pruned']:.2f} | {r['top3_pruned']:.2f} | {r['regret']:.4f} | "
                  f"{r['regret_over_noise']:.2f} | {r['steps']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps(table, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="full-budget learning curves of a sweep's trials")
    t.add_argument("--sweep", default=SWEEP)
    t.add_argument("--sets", type=int, default=3)
    t.add_argument("--trials", type=int, default=8, help="trials per set (the demo's 8)")
    t.add_argument("--steps", type=int, default=None, help="each trial's budget (default: the sweep's)")
    t.add_argument("--every", type=int, default=250)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--out", type=Path, default=CURVES)
    r = sub.add_parser("replay", help="each pruner's decisions on the stored curves")
    r.add_argument("--curves", type=Path, default=CURVES)
    r.add_argument("--orders", type=int, default=20, help="random trial orders per set")
    r.add_argument("--concurrency", type=int, default=2, help="trials at a time (the demo's max_concurrent)")
    r.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)
    return train(args) if args.command == "train" else replay(args)


if __name__ == "__main__":
    sys.exit(main())
