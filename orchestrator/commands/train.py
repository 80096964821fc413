"""`imm-orch train`: one run as Ray Train workers, tracked in one MLflow run."""

from __future__ import annotations

import time

from orchestrator import terminal
from orchestrator.commands import Command, overrides_arg, ray_flags, register

EXAMPLES = """\
examples:
  imm-orch train toy2d                                   # embedded local Ray, MLflow in ./imm-runs/
  imm-orch train toy2d trainer.num_workers=2 imm.group_size=8 train.steps=2000
  imm-orch train toy2d --dry-run                         # resolved config and resources, no Ray
  imm-orch train my.yaml --name m8-laplace               # relaunching the same name resumes the run
  imm-orch train --best-of sweeps/toy2d_smoke.yaml train.steps=6000   # the winner, twice its trials' 3000 steps
  imm-orch train my.yaml --address auto --tracking-uri http://mlflow:5000 trainer.use_gpu=true
  ray job submit --address http://HEAD:8265 --working-dir . -- python -m orchestrator.cli train my.yaml --address auto

The run name defaults to METHOD-DATASET-<hash of the resolved config>, so re-running the same command
resumes that run (from its last checkpoint, in the same MLflow run) instead of starting over.
Fault drill: IMM_ORCH_KILL_WORKER="step=30,rank=1,marker=/tmp/kill-once" SIGKILLs one worker once.
"""


def arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="a YAML config file, or a built-in config name (toy2d); not with --best-of")
    overrides_arg(parser, "dotted config overrides, e.g. imm.kernel=rbf")
    parser.add_argument("--name", default=None, help="run name (Ray's and MLflow's); the same name resumes the run")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: imm)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate, print the resolved config and the resources it would take; start nothing")
    parser.add_argument("--best-of", metavar="SWEEP.yaml", default=None,
                        help="train the best complete trial's settings of this sweep again (e.g. for longer: "
                             "train.steps=N), as a run nested under the sweep's parent run that `promote --sweep` sees")
    ray_flags(parser)


def prepare(args):
    """The run planned and every input checked (no Ray yet); the work that runs it."""
    from imm.config import load_config
    from orchestrator.infra import preflight
    from orchestrator.run.launch import plan_run
    from orchestrator.run.worker import KillSwitch

    overridden = tuple(o.split("=", 1)[0].lstrip("+~") for o in args.overrides)  # shown as MLflow params
    if args.best_of:
        from orchestrator.sweep.best import best_of

        if args.config and "=" in args.config:  # argparse took the first override for the config
            args.overrides.insert(0, args.config)
            overridden = (args.config.split("=", 1)[0], *overridden)
        elif args.config:
            raise ValueError(f"--best-of: the config comes from the sweep; drop {args.config!r}")
        cfg, keys, found = best_of(args.best_of, args.overrides, args.tracking_uri)
        plan = plan_run(cfg, name=args.name or found.name, tracking_uri=args.tracking_uri,
                        experiment=args.experiment or found.experiment, param_keys=(*keys, *overridden),
                        title=found.title, tags=found.tags)
    elif args.config is None:
        raise ValueError("train: give a CONFIG (a YAML file or toy2d, digits, cifar10) or --best-of SWEEP.yaml")
    else:
        cfg = load_config(args.config, args.overrides)
        plan = plan_run(cfg, name=args.name, tracking_uri=args.tracking_uri, experiment=args.experiment,
                        param_keys=overridden)
    kill = KillSwitch.from_env()
    preflight.check_run(plan.cfg, plan.tracking_uri, local=args.address is None, dry_run=args.dry_run)
    return lambda: run_train(args, plan, kill)


def run_train(args, plan, kill, out=None) -> int:
    from imm.config import to_yaml
    from imm.metrics.evaluator import QUALITY_PREFIXES
    from orchestrator.infra import cluster, preflight

    out = out or terminal.out()
    if args.dry_run:
        print(to_yaml(plan.cfg), file=out)
        print(plan.describe(), file=out)
        print("ray:          " + (args.address or "embedded local Ray (not started: --dry-run)"), file=out)
        return 0

    from orchestrator.run.launch import launch

    print(plan.describe(), file=out, flush=True)
    t0 = time.perf_counter()
    with cluster.connect(args.address, num_workers=plan.num_workers, stream=out) as address:
        preflight.check_shared_stores(plan.cfg, plan.tracking_uri, nodes=cluster.alive_nodes())  # its size now known
        t_ray = time.perf_counter() - t0
        result = launch(plan, ray_address=address, kill=kill, stream=out)
    wall = time.perf_counter() - t0
    quality = " ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if k.startswith(QUALITY_PREFIXES))
    workers = f", worker start-up {result.startup_s:.1f}s" if result.startup_s is not None else ""
    print(f"done in {wall:.1f}s (Ray start-up {t_ray:.1f}s{workers}, fit {result.fit_s:.1f}s)  {quality}".rstrip(), file=out)
    print(f"final checkpoint: {result.checkpoint}", file=out)
    print(f"mlflow run id: {result.run_id}", file=out, flush=True)
    return 0


def storage_root(args) -> str:
    """The run's storage.root, where its log file goes."""
    from imm.config import load_config

    return load_config(args.config, args.overrides).storage.root


COMMAND = register(Command(
    name="train",
    help="one training run as Ray Train workers, tracked in MLflow",
    description="Launch one run as a Ray Train TorchTrainer; prints the MLflow run id and where checkpoints are.",
    examples=EXAMPLES,
    arguments=arguments,
    prepare=prepare,
    resume_hint="rerun the same command to resume",
    overrides=True,
    log_root=storage_root,
))
