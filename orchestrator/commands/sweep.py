"""`imm-orch sweep`: an Optuna sweep whose trials are Ray Train runs, nested under one MLflow parent run."""

from __future__ import annotations

from orchestrator import terminal
from orchestrator.commands import Command, at_least, overrides_arg, ray_flags, register

EXAMPLES = """\
examples:
  imm-orch sweep sweeps/toy2d_smoke.yaml                 # embedded local Ray, MLflow and the study in ./imm-runs/
  imm-orch sweep sweeps/toy2d_smoke.yaml --trials 4 train.steps=200   # key=value: base run-config overrides
  imm-orch sweep sweeps/toy2d_smoke.yaml --resume        # after a crash or Ctrl-C: finished trials are kept
  imm-orch sweep sweeps/toy2d_smoke.yaml --dry-run       # validate; print the space, the base config, the storage
  imm-orch sweep my_sweep.yaml --address auto --tracking-uri http://mlflow:5000
  imm-orch status toy2d_smoke                            # the trials so far and the best one

Each trial is one Ray Train run named SWEEP-ID-tNNNN and one MLflow run nested under the sweep's parent run.
"""


def arguments(parser) -> None:
    parser.add_argument("sweep", help="a sweep YAML file (see sweeps/)")
    overrides_arg(parser, "base run-config overrides for every trial, e.g. train.steps=200")
    parser.add_argument("--trials", type=int, default=None, help="total trials (default: the file's `trials`)")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="trials at once (default: the file's, capped by the cluster's resources)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the stored study: finished trials are kept, interrupted ones resume")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: the file's, else imm)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; start nothing")
    ray_flags(parser)


def prepare(args):
    """The sweep loaded and every input checked, the stored study's included (no Ray yet); the work that runs it."""
    from orchestrator.infra import preflight
    from orchestrator.sweep.spec import load_sweep

    sweep = load_sweep(args.sweep, base_overrides=args.overrides)
    at_least("--trials", args.trials, 1)
    at_least("--max-concurrent", args.max_concurrent, 1)
    if args.max_concurrent is not None:
        sweep.spec.max_concurrent = args.max_concurrent
    preflight.check_sweep(sweep, args.tracking_uri, local=args.address is None, dry_run=args.dry_run,
                          resume=args.resume)
    return lambda: run_sweep(args, sweep)


def run_sweep(args, sweep, out=None) -> int:
    from imm.config import to_yaml
    from orchestrator.infra import cluster, preflight
    from orchestrator.sweep.runner import SweepFailed, SweepRunner
    from orchestrator.sweep.study import redact, storage_url, study_setting
    from orchestrator.sweep.trials import trial_resources
    from orchestrator.track import tracking

    out = out or terminal.out()
    if args.dry_run:
        print(f"sweep {sweep.name!r}: {args.trials or sweep.spec.trials} trials, sampler {sweep.spec.sampler.name}, "
              f"pruner {sweep.spec.pruner.name}", file=out)
        print("objective: " + ", ".join(f"{d} {m}" for m, d in zip(sweep.metrics, sweep.directions, strict=True)),
              file=out)
        print("space:\n" + "\n".join(f"  {p.describe()}" for p in sweep.params), file=out)
        print(f"study storage: {redact(storage_url(sweep))}", file=out)
        print("each trial: " + ", ".join(f"{v:g} {k}" for k, v in trial_resources(sweep).items()), file=out)
        print("base run config:\n" + to_yaml(sweep.base), file=out)
        return 0
    workers = int(sweep.base.trainer.num_workers) * int(sweep.spec.max_concurrent or 1)
    try:
        with cluster.connect(args.address, num_workers=workers, stream=out) as address:
            preflight.check_shared_stores(sweep.base, tracking.tracking_uri(sweep.base, args.tracking_uri),
                                          study_setting(sweep), nodes=cluster.alive_nodes())
            runner = SweepRunner(sweep, ray_address=address, tracking_uri=args.tracking_uri,
                                 experiment=args.experiment, resume=args.resume, trials=args.trials, stream=out)
            result = runner.run()
    except SweepFailed as e:
        if args.debug:
            raise
        print(f"imm-orch: sweep stopped: {e} (fix it, then rerun with --resume)", file=terminal.err())
        return 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
    print(f"sweep done in {result.wall_s:.0f}s: {counts}", file=out)
    for b in result.best:
        shown = " ".join(f"{m}={v:.4g}" for m, v in zip(sweep.metrics, b["values"], strict=True))
        params = " ".join(f"{k}={v}" for k, v in b["params"].items())
        print(f"best: trial {b['number']}  {shown}  {params}  (mlflow run {b['run_id']})", file=out)
    print(f"mlflow parent run id: {result.parent_run_id}", file=out, flush=True)
    if not result.counts.get("complete") and not result.counts.get("pruned"):
        print(f"imm-orch: no trial of sweep {sweep.name!r} completed (imm-orch status {sweep.name} says why)",
              file=terminal.err())
        return 1
    return 0


def storage_root(args) -> str:
    """The sweep's base config's storage.root, where its log file goes."""
    from orchestrator.sweep.spec import load_sweep

    return load_sweep(args.sweep, base_overrides=args.overrides).base.storage.root


COMMAND = register(Command(
    name="sweep",
    help="an Optuna sweep: each trial a Ray Train run, nested under one MLflow parent run",
    description="Run (or --resume) the sweep a YAML file defines; prints each trial, the best one and the "
                "MLflow parent run id.",
    examples=EXAMPLES,
    arguments=arguments,
    prepare=prepare,
    resume_hint="rerun with --resume to continue",
    overrides=True,
    log_root=storage_root,
))
