"""The driver's cost of proposing one trial as a sweep grows: `ask_distinct` (orchestrator.sweep.study), which keeps
an in-memory mirror of the study in step trial by trial, against the way it proposed before (a throwaway study per
proposal, the whole history copied into it: O(trials) per ask), and against Optuna's own `ask` on the study (the
sampler's floor, which repeats parameter sets). TPE (multivariate, grouped, constant liar), as sweeps use it, on a
space of five keys, four of them continuous, so that repeats are rare; each trial is told a random value at once.

    .venv/bin/python -m benchmarks.speed.ask_cost [--sizes 100 1000] [--asks 20]

Prints, per study size, seconds per ask of each way and the ratio copy / mirror.

`--driver`: instead, the driver's own cost per trial as its study grows, as a sweep pays it: the sweep's study
(`open_study`, a journal file), 16 trials running, each new trial proposed (`ask_distinct`) and the oldest told.
Flat means the study code's cost per trial does not grow with the trials finished:

    .venv/bin/python -m benchmarks.speed.ask_cost --driver --sizes 600 5000 --asks 100
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings

SPACE = {
    "train.lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "imm.b": {"low": 2.0, "high": 8.0},
    "imm.a": {"low": 0.5, "high": 2.0},
    "train.ema_decay": {"low": 0.99, "high": 0.9999},
    "imm.group_size": {"choices": [2, 4, 8]},
}


def copy_per_ask(study, sweep):
    """The proposal before the mirror: a new in-memory study per proposal, the whole history added to it."""
    import optuna

    from orchestrator.sweep.study import PROPOSALS, optuna_sampler, point_key

    TS = optuna.trial.TrialState
    history = study.get_trials(deepcopy=False, states=[TS.COMPLETE, TS.PRUNED, TS.FAIL, TS.RUNNING])
    seen = {point_key(t.params) for t in history}
    proposal = None
    for attempt in range(PROPOSALS):
        shadow = optuna.create_study(directions=study.directions,
                                     sampler=optuna_sampler(sweep, len(history) * PROPOSALS + attempt))
        shadow.add_trials(history)
        proposal = sweep.suggest(shadow.ask())
        if point_key(proposal) not in seen:
            break
    study.enqueue_trial(proposal)
    trial = study.ask()
    return trial, sweep.suggest(trial)


def plain_ask(study, sweep):
    trial = study.ask()
    return trial, sweep.suggest(trial)


def per_ask(ask, study, sweep, asks: int, rng: random.Random) -> float:
    times = []
    for _ in range(asks):
        t0 = time.perf_counter()
        trial, _ = ask(study, sweep)
        times.append(time.perf_counter() - t0)
        study.tell(trial, rng.random())
    return statistics.median(times)


def driver_cost(sizes: list[int], asks: int) -> None:
    """Mean seconds of `ask_distinct` + `tell` per trial on a sweep's journal study, 16 running, at each size."""
    import tempfile

    from orchestrator.sweep.spec import sweep_from_dict
    from orchestrator.sweep.study import ask_distinct, open_study

    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="imm-ask-") as root:
        sweep = sweep_from_dict({"name": "driver_cost", "base": {"config": "toy2d", "overrides": [f"storage.root={root}"]},
                                 "objective": "energy/steps_1", "space": SPACE,
                                 "trials": max(sizes) + 2 * asks, "sampler": {"name": "tpe", "seed": 0}})
        study = open_study(sweep, resume=False)
        running: list = []

        def step() -> None:
            running.append(ask_distinct(study, sweep)[0])
            if len(running) > 16:
                study.tell(running.pop(0), rng.random())

        print(f"the driver's proposal and tell per trial, a journal study, 16 running (mean over {asks} trials)")
        print(f"{'finished':>9} {'ms per trial':>13}")
        made = 0
        for size in sorted(sizes):
            while made < size + 16:
                step()
                made += 1
            t0 = time.perf_counter()
            for _ in range(asks):
                step()
            made += asks
            print(f"{size:>9} {(time.perf_counter() - t0) / asks * 1e3:>13.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="study sizes (trials told)")
    parser.add_argument("--asks", type=int, default=20, help="asks timed per way and size (the median is printed)")
    parser.add_argument("--driver", action="store_true", help="the driver's proposal and tell per trial instead")
    args = parser.parse_args()
    import optuna

    from orchestrator.sweep.spec import sweep_from_dict
    from orchestrator.sweep.study import ask_distinct, optuna_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.driver:
        driver_cost(args.sizes, args.asks)
        return
    sweep = sweep_from_dict({"name": "ask_cost", "base": {"config": "toy2d"}, "objective": "energy/steps_1",
                             "trials": max(args.sizes) + 3 * args.asks, "space": SPACE})
    rng = random.Random(0)
    study = optuna.create_study(directions=sweep.directions, sampler=optuna_sampler(sweep))
    print(f"TPE, {len(SPACE)} keys; median seconds per ask over {args.asks} asks at each size")
    print(f"{'trials':>7} {'mirror':>8} {'copy':>8} {'optuna':>8} {'copy/mirror':>12}")
    for size in sorted(args.sizes):
        while len(study.trials) < size:
            trial, _ = ask_distinct(study, sweep)
            study.tell(trial, rng.random())
        mirror = per_ask(ask_distinct, study, sweep, args.asks, rng)
        copy = per_ask(copy_per_ask, study, sweep, args.asks, rng)
        plain = per_ask(plain_ask, study, sweep, args.asks, rng)
        print(f"{size:>7} {mirror:>8.4f} {copy:>8.4f} {plain:>8.4f} {copy / mirror:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
