"""How long a tiny two-worker run takes at Ray Train's default controller poll (2 s) against this project's (0.5 s,
`orchestrator/run/launch.py`). A worker's reports and the run's end wait for the controller's next look at its
workers, so a short run with many reports pays the poll several times.

Each run is `imm-orch train toy2d` at the tests' tiny size (40 steps, 2 workers, 8 reports, 2 checkpoints and 2
evaluations) on one local Ray of 2 CPUs, the two settings interleaved; the first run of each is a warm-up.

    .venv/bin/python -m benchmarks.speed.train_poll [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

TINY = ["model.hidden=32", "model.depth=1", "train.steps=40", "train.batch_size=64", "train.log_every=5",
        "train.checkpoint_every=20", "eval.every=20", "eval.n_samples=200", "eval.steps=[1,2]", "trainer.num_workers=2"]
VAR = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import ray

    from orchestrator import cli
    from orchestrator.run import launch  # noqa: F401 (importing it sets the project's poll in os.environ)

    settings = {"Ray's default, 2 s": "2.0", f"this project's, {os.environ[VAR]} s": os.environ[VAR]}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    times: dict[str, list[float]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as root:
        for i in range(args.repeats + 1):
            for label, value in settings.items():
                os.environ[VAR] = value  # read by TorchTrainer.fit(), which copies it to the controller
                t0 = time.perf_counter()
                code = cli.main(["train", "toy2d", *TINY, f"train.out_dir={root}/out", f"storage.root={root}",
                                 "--tracking-uri", f"sqlite:///{root}/mlflow.db", "--experiment", "poll",
                                 "--name", f"poll-{i}-{value.replace('.', '_')}"])
                assert code == 0, f"the run at {label} failed"
                if i:  # the first round warms the workers' imports and the store
                    times[label].append(time.perf_counter() - t0)
    print(f"{'controller poll':<24} {'median s':>9}  runs")
    med = {k: statistics.median(v) for k, v in times.items()}
    for label, ts in times.items():
        print(f"{label:<24} {med[label]:9.1f}  " + " ".join(f"{t:.1f}" for t in ts))
    default, ours = med.values()
    print(f"ratio: {ours / default:.2f} (this project's poll / Ray's default)")


if __name__ == "__main__":
    main()
