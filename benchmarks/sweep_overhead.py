"""What a sweep costs beyond its trials' training, and what running trials side by side buys.

Runs the same N-trial toy2d sweep (random sampler, fixed seed: the same trials both times) once with one
trial at a time and once with two, on one local Ray, and compares against the baseline measured inside the
trials: the sum of their training-loop time (`time/train_s`, logged by each trial's rank 0).

    overhead = sweep wall time (1 at a time) / sum of trial training time     target: < 1.10 for trials of minutes
    speed-up = sweep wall time (1 at a time) / sweep wall time (2 at a time)

It also times a no-op `TorchTrainer.fit()` launched from a Ray task (Ray Train's own fixed cost per run: controller,
placement group, worker group, process group), to tell the sweep's share of the per-trial overhead from Ray's.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 4] [--steps 1500] [--cpus 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time

from orchestrator import tracking
from orchestrator.sweep.runner import SweepRunner
from orchestrator.sweep.spec import sweep_from_dict


def run_sweep(root: str, trials: int, steps: int, concurrent: int) -> tuple[float, list[float]]:
    sweep = sweep_from_dict({
        "name": f"overhead-{concurrent}",
        "base": {"config": "toy2d", "overrides": [
            f"train.steps={steps}", f"train.checkpoint_every={max(steps // 3, 1)}", f"eval.every={steps}",
            "eval.n_samples=1000", f"storage.root={root}"]},
        "space": {"imm.group_size": {"choices": [4, 8]}, "imm.kernel": {"choices": ["laplace", "rbf"]}},
        "objective": "energy/steps_1",
        "sampler": {"name": "random", "seed": 0},
        "trials": trials,
        "max_concurrent": concurrent,
    })
    runner = SweepRunner(sweep, ray_address="benchmark", tracking_uri=None, experiment="overhead", resume=False,
                         trials=trials, stream=open("/dev/null", "w"))  # noqa: SIM115
    t0 = time.perf_counter()
    result = runner.run()
    wall = time.perf_counter() - t0
    mlc = tracking.client(tracking.tracking_uri(sweep.base))
    study_trials = runner.study.get_trials(deepcopy=False)
    train_s = [mlc.get_run(t.user_attrs["mlflow_run_id"]).data.metrics["time/train_s"] for t in study_trials]
    assert result.counts == {"complete": trials}, result.counts
    return wall, train_s


def _noop(config):
    import ray.train

    ray.train.report({"done": 1})


def bare_fit_s(root: str) -> float:
    """Seconds of one no-op TorchTrainer.fit() (1 worker) from inside a Ray task, as a sweep trial runs it."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    @ray.remote(num_cpus=0)
    def fit(name):
        t0 = time.perf_counter()
        TorchTrainer(_noop, scaling_config=ScalingConfig(num_workers=1),
                     run_config=RunConfig(name=name, storage_path=root)).fit()
        return time.perf_counter() - t0

    return min(ray.get(fit.remote(f"noop{i}")) for i in range(2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1500, help="training steps per trial")
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs of the local Ray (2: two trials fit)")
    args = parser.parse_args()

    import ray

    import orchestrator.launch  # noqa: F401  (Ray Train V2 before ray.train is imported)

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="imm-sweep-bench-") as root:
        noop_s = bare_fit_s(f"{root}/noop")
        print(f"a no-op TorchTrainer.fit() from a Ray task: {noop_s:.1f}s", flush=True)
        for concurrent in (1, 2):
            rows[concurrent] = run_sweep(f"{root}/c{concurrent}", args.trials, args.steps, concurrent)
            wall, train_s = rows[concurrent]
            print(f"{concurrent} at a time: sweep {wall:6.1f}s   trials' training {sum(train_s):6.1f}s "
                  f"({', '.join(f'{s:.1f}' for s in train_s)})", flush=True)
    ray.shutdown()
    wall1, train1 = rows[1]
    wall2, _ = rows[2]
    print(f"\n| {args.trials} trials x {args.steps} steps | value |\n|---|---|")
    print(f"| mean trial training time (baseline, measured inside the trials) | {sum(train1) / len(train1):.1f} s |")
    print(f"| overhead: sweep wall (1 at a time) / sum of trial training | {wall1 / sum(train1):.3f} |")
    per_trial = (wall1 - sum(train1)) / len(train1)
    print(f"| overhead per trial / a no-op TorchTrainer.fit() ({noop_s:.1f} s) | "
          f"{per_trial:.1f} s, {per_trial / noop_s:.2f}x |")
    print(f"| speed-up: sweep wall 1 at a time / 2 at a time | {wall1 / wall2:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
