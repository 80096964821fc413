"""The driver's cost of proposing one trial as a sweep grows: `ask_distinct` (orchestrator.sweep.study), which keeps
an in-memory mirror of the study in step trial by trial, against the way it proposed before (a throwaway study per
proposal, the whole history copied into it: O(trials) per ask), and against Optuna's own `ask` on the study (the
sampler's floor, which repeats parameter sets). TPE (multivariate, grouped, constant liar), as sweeps use it, on a
space of five keys, four of them continuous, so that repeats are rare; each trial is told a random value at once.

    .venv/bin/python -m benchmarks.speed.ask_cost [--sizes 100 1000] [--asks 20]

Prints, per study size, seconds per ask of each way and the ratio copy / mirror.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="study sizes (trials told)")
    parser.add_argument("--asks", type=int, default=20, help="asks timed per way and size (the median is printed)")
    args = parser.parse_args()
    import optuna

    from orchestrator.sweep.spec import sweep_from_dict
    from orchestrator.sweep.study import ask_distinct, optuna_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
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
