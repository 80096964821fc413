"""`imm-orch`: the command line for runs on Ray, tracked in MLflow.

Everything that can be wrong in the user's input is checked before Ray starts, and reported as one
line with exit code 2 (`--debug` shows the traceback); a training failure exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time

TRAIN_EXAMPLES = """\
examples:
  imm-orch train toy2d                                   # embedded local Ray, MLflow in ./imm-runs/
  imm-orch train toy2d trainer.num_workers=2 imm.group_size=8 train.steps=2000
  imm-orch train toy2d --dry-run                         # resolved config and resources, no Ray
  imm-orch train my.yaml --name m8-laplace               # relaunching the same name resumes the run
  imm-orch train my.yaml --address auto --tracking-uri http://mlflow:5000 trainer.use_gpu=true
  ray job submit --address http://HEAD:8265 --working-dir . -- python -m orchestrator.cli train my.yaml --address auto

The run name defaults to METHOD-DATASET-<hash of the resolved config>, so re-running the same command
resumes that run (from its last checkpoint, in the same MLflow run) instead of starting over.
Fault drill: IMM_ORCH_KILL_WORKER="step=30,rank=1,marker=/tmp/kill-once" SIGKILLs one worker once.
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None,
                        help="Ray cluster: auto, HOST:6379 or ray://HOST:10001 (default: start a local Ray)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<storage.root>/mlflow.db)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imm-orch",
        description="Train and track Inductive Moment Matching models on Ray, with MLflow.",
        epilog="run `imm-orch train --help` for examples",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="one training run as Ray Train workers, tracked in MLflow",
        description="Launch one run as a Ray Train TorchTrainer; prints the MLflow run id and where checkpoints are.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="a YAML config file, or a built-in config name (toy2d)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. imm.kernel=rbf")
    train.add_argument("--name", default=None, help="run name (Ray's and MLflow's); the same name resumes the run")
    train.add_argument("--experiment", default=None, help="MLflow experiment (default: imm)")
    train.add_argument("--dry-run", action="store_true",
                       help="validate, print the resolved config and the resources it would take; start nothing")
    _common(train)
    return parser


def prepare_train(args):
    """(plan, kill switch): the config loaded and validated, the run planned; no Ray yet."""
    from imm.config import load_config
    from orchestrator import cluster
    from orchestrator.launch import plan_run
    from orchestrator.worker import KillSwitch

    cfg = load_config(args.config, args.overrides)
    plan = plan_run(cfg, name=args.name, tracking_uri=args.tracking_uri, experiment=args.experiment)
    kill = KillSwitch.from_env()
    if args.address is None:
        cluster.check_local(plan.cfg)
    return plan, kill


def run_train(args, plan, kill, out=None) -> int:
    out = out or sys.stdout
    from imm.config import to_yaml
    from orchestrator import cluster

    if args.dry_run:
        print(to_yaml(plan.cfg), file=out)
        print(plan.describe(), file=out)
        print("ray:          " + (args.address or "embedded local Ray (not started: --dry-run)"), file=out)
        return 0

    from orchestrator.launch import launch

    print(plan.describe(), file=out, flush=True)
    t0 = time.perf_counter()
    with cluster.connect(args.address, num_workers=plan.num_workers, stream=out) as address:
        t_ray = time.perf_counter() - t0
        result = launch(plan, ray_address=address, kill=kill, stream=out)
    wall = time.perf_counter() - t0
    quality = " ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if k.startswith(("energy/", "fid/")))
    workers = f", worker start-up {result.startup_s:.1f}s" if result.startup_s is not None else ""
    print(f"done in {wall:.1f}s (Ray start-up {t_ray:.1f}s{workers}, fit {result.fit_s:.1f}s)  {quality}".rstrip(), file=out)
    print(f"final checkpoint: {result.checkpoint}", file=out)
    print(f"mlflow run id: {result.run_id}", file=out, flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options may come before, between or after the key=value overrides."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from imm.config import ConfigError

    try:
        plan, kill = prepare_train(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return _user_error(e, args.debug)
    try:
        return run_train(args, plan, kill)
    except KeyboardInterrupt:
        print("imm-orch: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    except (ConfigError, ConnectionError) as e:
        return _user_error(e, args.debug)
    except Exception as e:
        if args.debug or not _is_training_failure(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"imm-orch: training failed: {first} (rerun the same command to resume; --debug for details)",
              file=sys.stderr)
        return 1


def _user_error(e: Exception, debug: bool) -> int:
    if debug:
        raise e
    print(f"imm-orch: error: {e}", file=sys.stderr)
    return 2


def _is_training_failure(e: Exception) -> bool:
    try:
        from ray.train import TrainingFailedError
    except ImportError:
        return False
    return isinstance(e, TrainingFailedError)


if __name__ == "__main__":
    sys.exit(main())
