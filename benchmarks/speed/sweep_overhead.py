"""How much of a sweep's wall time goes to training: the share its trials spend in their training loops.

Runs the same N-trial toy2d sweep (random sampler, fixed seed: the same trials each time), one trial at a time,
twice on a local Ray started for it the way `imm-orch sweep` starts one: with one-worker trials (trained in their
Ray task, `orchestrator.run.in_process`) and with two-worker trials (a Ray Train TorchTrainer each, DDP over gloo).
The baseline, measured in the same run: the first trial's settings trained in this process by
`imm.training.loop.train_loop`, with no Ray and no MLflow.

    share    = sum of the trials' training-loop time (`time/train_s`, logged by rank 0) / the sweep's wall time,
               Ray's start-up and shut-down included                      target: >= 0.85 for trials of ~30 s
    overhead = (wall time - sum of training) / trials: what each trial costs beyond its training, split into a
               trial's span in the study (ask to tell) beyond its training loop, the time between two trials, and
               what a sweep pays once (Ray's start-up, the study, the parent run, the final report)
    loop / plain = a trial's training loop / the same loop in this process (threads, Ray's worker env)

It also times a no-op `TorchTrainer.fit()` from a Ray task: Ray Train's fixed cost per run, which one-worker
trials no longer pay.

    .venv/bin/python -m benchmarks.speed.sweep_overhead [--trials 4] [--steps 1500] [--workers 1 2] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from orchestrator.sweep.runner import SweepRunner
from orchestrator.sweep.spec import sweep_from_dict
from orchestrator.track import tracking

SPACE = {"imm.group_size": {"choices": [4, 8]}, "imm.kernel": {"choices": ["laplace", "rbf"]}}


def overrides(root: str, steps: int, workers: int) -> list[str]:
    return [f"train.steps={steps}", f"train.checkpoint_every={max(steps // 3, 1)}", f"eval.every={steps}",
            "eval.n_samples=1000", f"storage.root={root}", f"trainer.num_workers={workers}"]


def run_sweep(root: str, trials: int, steps: int, workers: int, cpus: int) -> tuple[float, list[float], dict]:
    """(wall time with Ray's start-up, each trial's training-loop seconds, the first trial's params). Each trial
    takes the machine's `cpus`, shared among its workers."""
    from orchestrator.infra.cluster import connect

    sweep = sweep_from_dict({
        "name": f"overhead-{workers}w",
        "base": {"config": "toy2d", "overrides": overrides(root, steps, workers)},
        "space": SPACE,
        "objective": "energy/steps_1",
        "sampler": {"name": "random", "seed": 0},
        "trials": trials,
        "max_concurrent": 1,
        "resources": {"workers": workers, "cpus_per_worker": cpus / workers, "gpus_per_worker": 0},
    })
    t0 = time.perf_counter()
    with connect(None, num_workers=workers, stream=open("/dev/null", "w")) as address:  # noqa: SIM115
        ray_start_s = time.perf_counter() - t0
        runner = SweepRunner(sweep, ray_address=address, tracking_uri=None, experiment="overhead", resume=False,
                             trials=trials, stream=open("/dev/null", "w"))  # noqa: SIM115
        result = runner.run()
        t_noop = time.perf_counter()
        noop_s = bare_fit_s(f"{root}/noop") if workers == 1 else None
        t_noop = time.perf_counter() - t_noop  # not the sweep's
    wall = time.perf_counter() - t0 - t_noop
    assert result.counts == {"complete": trials}, result.counts
    mlc = tracking.client(tracking.tracking_uri(sweep.base))
    study_trials = sorted(runner.study.get_trials(deepcopy=False), key=lambda t: t.number)
    train_s = [mlc.get_run(t.user_attrs["mlflow_run_id"]).data.metrics["time/train_s"] for t in study_trials]
    spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study_trials]
    between = [(b.datetime_start - a.datetime_complete).total_seconds()
               for a, b in zip(study_trials, study_trials[1:], strict=False)]
    return wall, train_s, {"params": study_trials[0].params, "noop_s": noop_s, "ray_start_s": ray_start_s,
                           "in_trial_s": (sum(spans) - sum(train_s)) / trials,
                           "between_s": sum(between) / max(len(between), 1),
                           "fixed_s": wall - sum(spans) - sum(between)}


def plain_train_s(root: str, steps: int, params: dict, cpus: int) -> float:
    """The training-loop seconds of the first trial's settings, trained in this process (`cpus` threads) without
    Ray or MLflow."""
    import torch

    from imm.config import load_config
    from imm.training.loop import train_loop

    torch.set_num_threads(cpus)
    cfg = load_config("toy2d", [*overrides(root, steps, 1), *(f"{k}={v}" for k, v in params.items())])
    return float(train_loop(cfg, device="cpu")["time/train_s"])


def _noop(config):
    import ray.train

    ray.train.report({"done": 1})


def bare_fit_s(root: str) -> float:
    """Seconds of one no-op TorchTrainer.fit() (1 worker) from inside a Ray task (the better of two)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.infra.cluster import trial_env

    @ray.remote(num_cpus=0, runtime_env=trial_env())
    def fit(name):
        t0 = time.perf_counter()
        TorchTrainer(_noop, scaling_config=ScalingConfig(num_workers=1),
                     run_config=RunConfig(name=name, storage_path=root)).fit()
        return time.perf_counter() - t0

    return min(ray.get(fit.remote(f"noop{i}")) for i in range(2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1500, help="training steps per trial (1500: ~30 s on 2 cores)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="workers per trial, one sweep each")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs per trial (default: the machine's)")
    args = parser.parse_args()

    import orchestrator.run.launch  # noqa: F401  (Ray Train V2 before ray.train is imported)

    rows = {}
    with tempfile.TemporaryDirectory(prefix="imm-sweep-bench-") as root:
        for workers in args.workers:
            rows[workers] = run_sweep(f"{root}/w{workers}", args.trials, args.steps, workers, args.cpus)
            wall, train_s, extra = rows[workers]
            print(f"{workers}-worker trials, one at a time: sweep {wall:6.1f}s   trials' training {sum(train_s):6.1f}s "
                  f"({', '.join(f'{s:.1f}' for s in train_s)})", flush=True)
        first = rows[args.workers[0]]
        plain = plain_train_s(f"{root}/plain", args.steps, first[2]["params"], args.cpus)
        print(f"the first trial's settings in a plain process ({args.cpus} threads): training loop {plain:.1f}s",
              flush=True)
    print(f"\n| {args.trials} trials x {args.steps} steps, one at a time, {args.cpus} CPUs each | " +
          " | ".join(f"{w} worker{'s' if w > 1 else ''} per trial" for w in rows) + " |")
    print("|---|" + "---|" * len(rows))
    print("| share: trials' training / sweep wall (Ray start-up included) | " +
          " | ".join(f"{sum(t) / wall:.3f}" for wall, t, _ in rows.values()) + " |")
    print("| overhead per trial: (wall - training) / trials | " +
          " | ".join(f"{(wall - sum(t)) / len(t):.1f} s" for wall, t, _ in rows.values()) + " |")
    for label, key in [("of which within a trial's span in the study (ask to tell) beyond its training loop: the "
                        "driver's turnaround, the task's start, the MLflow run, the evaluation, the checkpoints",
                        "in_trial_s"),
                       ("of which from one trial's tell to the next one's ask", "between_s")]:
        print(f"| {label} | " + " | ".join(f"{e[key]:.1f} s" for _, _, e in rows.values()) + " |")
    print("| once per sweep: Ray's start-up, the study, the parent run, the report (wall - spans - betweens) | " +
          " | ".join(f"{e['fixed_s']:.1f} s (Ray {e['ray_start_s']:.1f} s)" for _, _, e in rows.values()) + " |")
    print(f"| first trial's loop / the same loop in a plain process ({plain:.1f} s) | " +
          " | ".join(f"{t[0] / plain:.2f}" for _, t, _ in rows.values()) + " |")
    noop = next((e["noop_s"] for _, _, e in rows.values() if e["noop_s"]), None)
    if noop:
        print(f"\nRay Train's fixed cost, a no-op TorchTrainer.fit() (1 worker) from a Ray task: {noop:.1f} s "
              "(not in the walls above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
