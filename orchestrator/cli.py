"""`imm-orch`: the command line for runs and sweeps on Ray, tracked in MLflow.

Everything that can be wrong in the user's input is checked before Ray starts, and reported as one
line with exit code 2 (`--debug` shows the traceback); a training failure exits 1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from orchestrator import terminal

TRAIN_EXAMPLES = """\
examples:
  imm-orch train toy2d                                   # embedded local Ray, MLflow in ./imm-runs/
  imm-orch train toy2d trainer.num_workers=2 imm.group_size=8 train.steps=2000
  imm-orch train toy2d --dry-run                         # resolved config and resources, no Ray
  imm-orch train my.yaml --name m8-laplace               # relaunching the same name resumes the run
  imm-orch train --best-of sweeps/toy2d_smoke.yaml train.steps=3000   # a sweep's winner, trained longer
  imm-orch train my.yaml --address auto --tracking-uri http://mlflow:5000 trainer.use_gpu=true
  ray job submit --address http://HEAD:8265 --working-dir . -- python -m orchestrator.cli train my.yaml --address auto

The run name defaults to METHOD-DATASET-<hash of the resolved config>, so re-running the same command
resumes that run (from its last checkpoint, in the same MLflow run) instead of starting over.
Fault drill: IMM_ORCH_KILL_WORKER="step=30,rank=1,marker=/tmp/kill-once" SIGKILLs one worker once.
"""

SWEEP_EXAMPLES = """\
examples:
  imm-orch sweep sweeps/toy2d_smoke.yaml                 # embedded local Ray, MLflow and the study in ./imm-runs/
  imm-orch sweep sweeps/toy2d_smoke.yaml --trials 4 train.steps=200   # key=value: base run-config overrides
  imm-orch sweep sweeps/toy2d_smoke.yaml --resume        # after a crash or Ctrl-C: finished trials are kept
  imm-orch sweep sweeps/toy2d_smoke.yaml --dry-run       # validate; print the space, the base config, the storage
  imm-orch sweep my_sweep.yaml --address auto --tracking-uri http://mlflow:5000
  imm-orch status toy2d_smoke                            # the trials so far and the best one

Each trial is one Ray Train run named SWEEP-ID-tNNNN and one MLflow run nested under the sweep's parent run.
"""

STATUS_EXAMPLES = """\
examples:
  imm-orch status toy2d_smoke                            # the study in ./imm-runs/optuna.journal
  imm-orch status sweeps/toy2d_smoke.yaml                # the study where that sweep file keeps it
  imm-orch status my_sweep --storage postgresql://optuna@db/optuna
"""

PROMOTE_EXAMPLES = """\
examples:
  imm-orch promote --sweep toy2d_smoke --metric energy/steps_2          # best trial -> models:/toy2d_smoke@champion
  imm-orch promote --sweep cifar10_imm_ablation --metric fid/steps_2 --model-name imm-cifar10
  imm-orch promote --run-id 3f2c... --metric fid/steps_1 --alias challenger
  imm-orch promote --sweep my_sweep --metric acc --mode max

Each promotion registers the run's checkpoint as a model version (an MLflow PyTorch model: `imm-orch sample`
and mlflow.pytorch.load_model read it), tags it with its lineage and metrics, and points the alias at it.
"""

SAMPLE_EXAMPLES = """\
examples:
  imm-orch sample --model models:/toy2d_smoke@champion --steps 2 --n 5000 --out samples.png
  imm-orch sample --model runs:/3f2c... --steps 1 --n 10000 --out samples.npy      # raw samples in [-1, 1]
  imm-orch sample --model imm-runs/ray/RUN/checkpoint_0003000 --steps 4 --out grid.png
  imm-orch sample --model models:/imm-cifar10@champion --label 3 --cfg-scale 1.5 --out cats.png

In Python: orchestrator.load_model("models:/toy2d_smoke@champion").sample(n=64, steps=2, seed=0)
"""

EVAL_EXAMPLES = """\
examples:
  imm-orch eval --model models:/toy2d_smoke@champion --steps 1 2 4 8
  imm-orch eval --model runs:/3f2c... --steps 2 --n 50000 eval.inception_weights=s3://weights/pt_inception.pth
  imm-orch eval --model ckpt/checkpoint.pt --steps 1 --no-log

Metrics: energy/steps_K (any data), fid/steps_K (Inception features, with eval.inception_weights) or fd/steps_K
(the project's own extractor: a classifier trained once on labelled data, random Fourier features otherwise).
"""

SUBMIT_EXAMPLES = """\
examples:
  imm-orch submit sweeps/toy2d_smoke.yaml --cluster http://HEAD:8265 --tracking-uri http://mlflow:5000 \\
      storage.ray_storage=s3://bucket/ray --follow            # the study: $IMM_OPTUNA_STORAGE or the file's storage
  imm-orch submit sweeps/toy2d_smoke.yaml --cluster http://HEAD:8265 --tracking-uri http://mlflow:5000 \\
      storage.ray_storage=s3://bucket/ray --resume --follow   # after the job died: the same stores, --resume
  imm-orch submit toy2d trainer.num_workers=4 --cluster http://HEAD:8265 --tracking-uri http://mlflow:5000 \\
      storage.ray_storage=s3://bucket/ray

The job runs `python -m orchestrator.cli sweep|train ... --address auto` on the head node, in a working dir with
this checkout's code (no .venv, imm-runs/, data or weights). Nodes share no disk, and a job's working dir is
deleted with it: MLflow must be a server, Ray checkpoints on S3 (or a folder every node mounts, declared with
storage.shared=true) and the study in an RDB or a journal on that shared folder; this is checked before submitting.
A cluster with token authentication (Ray's default) needs RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH.
"""

TOP_EXAMPLES = """\
the new-user path, on the embedded default (local Ray, MLflow and artifacts in ./imm-runs/):
  imm-orch sweep sweeps/toy2d_smoke.yaml                          # an Optuna sweep of IMM's axes on Ray
  imm-orch status toy2d_smoke                                     # its trials and the best one
  imm-orch promote --sweep toy2d_smoke --metric energy/steps_2    # best trial -> models:/toy2d_smoke@champion
  imm-orch sample --model models:/toy2d_smoke@champion --steps 2 --n 5000 --out samples.png
  imm-orch ui                                                     # the MLflow UI on http://127.0.0.1:5000
  imm-orch submit sweeps/toy2d_smoke.yaml --cluster http://HEAD:8265 --tracking-uri http://mlflow:5000 --follow

`imm-orch COMMAND --help` gives each command's options and examples; `--debug` shows tracebacks.
"""

IMPORT_EXAMPLES = """\
examples:
  imm-orch import --from official-cifar10 cifar10.pt --out imported/cifar10 \\
      data.name=cifar10:./data/cifar-10-batches-py eval.inception_weights=./weights/pt_inception-2015-12-05-6726825d.pth
  imm-orch eval --model imported/cifar10 --steps 1 2 --n 50000     # the paper: FID 3.20 and 1.98 (a GPU: ~minutes)
  imm-orch import --from official-imagenet256-ts-a2 imagenet256_ts_a2.pkl --out imported/imagenet256 \
      eval.vae=./weights/sd-vae-ft-ema data.name=latents:s3://bucket/imagenet256-latents
  imm-orch eval --model imported/imagenet256 --steps 1 2 4 8 --n 50000   # the paper: 8.05 3.99 2.51 1.99 (CFG 1.5)

The file is the authors' checkpoint (github.com/lumalabs/imm, Hugging Face lumaai/imm), which you download
yourself; nothing is fetched. It is read without the official code and without running code from the file.
"""

ENCODE_EXAMPLES = """\
examples:
  imm-orch encode folder:/data/imagenet/train --vae /models/sd-vae-ft-ema --out s3://bucket/imagenet256-latents \
      --posterior sample --normalisation official      # as the official IMM encoder: the released weights agree
  imm-orch encode folder:s3://bucket/images --vae s3://bucket/vae --out ./latents --resolution 64 --address auto
  imm-orch train imagenet256_dit data.name=latents:s3://bucket/imagenet256-latents

The VAE is a folder diffusers' AutoencoderKL.save_pretrained wrote (e.g. a copy of stabilityai/sd-vae-ft-ema you
put there); nothing is downloaded. One subfolder per class gives the labels.
"""

UI_EXAMPLES = """\
examples:
  imm-orch ui                                            # http://127.0.0.1:5000 on ./imm-runs/mlflow.db
  imm-orch ui --port 5050 --tracking-uri sqlite:///other/mlflow.db
  imm-orch ui --host 0.0.0.0                             # reachable from other machines (no authentication!)
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None,
                        help="Ray cluster: auto, HOST:6379 or ray://HOST:10001 (default: start a local Ray)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<storage.root>/mlflow.db)")
    _output_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imm-orch",
        description="Train, sweep and promote Inductive Moment Matching models on Ray, tracked in MLflow.",
        epilog=TOP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="one training run as Ray Train workers, tracked in MLflow",
        description="Launch one run as a Ray Train TorchTrainer; prints the MLflow run id and where checkpoints are.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", nargs="?", default=None,
                       help="a YAML config file, or a built-in config name (toy2d); not with --best-of")
    train.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                       help="dotted config overrides, e.g. imm.kernel=rbf")
    train.add_argument("--name", default=None, help="run name (Ray's and MLflow's); the same name resumes the run")
    train.add_argument("--experiment", default=None, help="MLflow experiment (default: imm)")
    train.add_argument("--dry-run", action="store_true",
                       help="validate, print the resolved config and the resources it would take; start nothing")
    train.add_argument("--best-of", metavar="SWEEP.yaml", default=None,
                       help="train the best complete trial's settings of this sweep again (e.g. for longer: "
                            "train.steps=N), as a run nested under the sweep's parent run that `promote --sweep` sees")
    _common(train)

    sweep = sub.add_parser(
        "sweep",
        help="an Optuna sweep: each trial a Ray Train run, nested under one MLflow parent run",
        description="Run (or --resume) the sweep a YAML file defines; prints each trial, the best one and the "
                    "MLflow parent run id.",
        epilog=SWEEP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("sweep", help="a sweep YAML file (see sweeps/)")
    sweep.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                       help="base run-config overrides for every trial, e.g. train.steps=200")
    sweep.add_argument("--trials", type=int, default=None, help="total trials (default: the file's `trials`)")
    sweep.add_argument("--max-concurrent", type=int, default=None,
                       help="trials at once (default: the file's, capped by the cluster's resources)")
    sweep.add_argument("--resume", action="store_true",
                       help="continue the stored study: finished trials are kept, interrupted ones resume")
    sweep.add_argument("--experiment", default=None, help="MLflow experiment (default: the file's, else imm)")
    sweep.add_argument("--dry-run", action="store_true", help="validate and print the plan; start nothing")
    _common(sweep)

    submit = sub.add_parser(
        "submit",
        help="a sweep or a run as a Ray job on a cluster (it outlives this machine)",
        description="Check a sweep file or run config as the cluster will see it, then submit it as a Ray job through "
                    "Ray's JobSubmissionClient; prints the job id and the commands to follow, inspect and stop it.",
        epilog=SUBMIT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument("target", metavar="SWEEP.yaml|CONFIG", help="a sweep file, or a run config (file or built-in name)")
    submit.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="run-config overrides")
    submit.add_argument("--cluster", default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                        help="the Ray dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    submit.add_argument("--follow", action="store_true", help="stream the driver's output; exit with its code")
    submit.add_argument("--resume", action="store_true", help="sweeps: continue the stored study (after the job died)")
    submit.add_argument("--trials", type=int, default=None, help="sweeps: total trials")
    submit.add_argument("--max-concurrent", type=int, default=None, help="sweeps: trials at once")
    submit.add_argument("--name", default=None, help="runs: the run name (the same name resumes the run)")
    submit.add_argument("--experiment", default=None, help="MLflow experiment")
    submit.add_argument("--working-dir", default=None,
                        help="the folder shipped with the job (default: this checkout)")
    _tracking_only(submit)

    status = sub.add_parser(
        "status",
        help="the trials of a sweep and the best one so far",
        description="Print a sweep's trials (state, objective, params, time) from its Optuna study.",
        epilog=STATUS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("sweep", help="a sweep name, or its YAML file")
    status.add_argument("--storage", default=None,
                        help="the study storage (default: the file's, else $IMM_OPTUNA_STORAGE, "
                             "else journal:./imm-runs/optuna.journal)")
    _output_flags(status)

    promote = sub.add_parser(
        "promote",
        help="register the best finished run's model and point an alias at it",
        description="Pick the best FINISHED run (of a sweep, or the one given) by a metric, register its checkpoint "
                    "as a new model version with lineage tags, and set the alias.",
        epilog=PROMOTE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = promote.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", default=None, help="promote this MLflow run")
    which.add_argument("--sweep", default=None, help="promote the best trial run of this sweep")
    promote.add_argument("--metric", required=True, help="e.g. fid/steps_1, energy/steps_2")
    promote.add_argument("--mode", default="min", choices=["min", "max"], help="min (default) or max is best")
    promote.add_argument("--alias", default="champion", help="the registry alias to set (default: champion)")
    promote.add_argument("--model-name", default=None, help="registered model name (default: the sweep or run name)")
    _tracking_only(promote)

    sample = sub.add_parser(
        "sample",
        help="draw samples from a model URI into .npy or a .png grid",
        description="Sample with the EMA weights of a model given as runs:/, models:/, a path or s3:// URI.",
        epilog=SAMPLE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_args(sample)
    sample.add_argument("--steps", type=int, default=1, help="sampling steps (1..8 for IMM; default 1)")
    sample.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("--out", required=True, help="output file: .npy (raw samples) or .png (grid or scatter)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--sampler", default=None,
                        help="one of the model's method's samplers (default: the one it was trained to use; a wrong one "
                             "is an error that lists them), e.g. pushforward|restart for imm")
    sample.add_argument("--label", type=int, default=None, help="class-conditional models: this class only")
    sample.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    _tracking_only(sample)

    ev = sub.add_parser(
        "eval",
        help="compute and log sample-quality metrics for a model URI",
        description="Evaluate a model (runs:/, models:/, a path or s3:// URI) at the given step counts; the metrics "
                    "are printed and logged to a new MLflow run that points back at the model.",
        epilog=EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_args(ev)
    ev.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                    help="eval.* overrides, e.g. eval.inception_weights=PATH eval.features=rff")
    ev.add_argument("--steps", nargs="+", default=["1"], help="sampling step counts: 1 2 4 or 1,2,4 (default: 1)")
    ev.add_argument("--n", type=int, default=None, help="samples per step count (default: the run's eval.n_samples)")
    ev.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's eval.seed)")
    ev.add_argument("--experiment", default=None, help="MLflow experiment (default: the model's run's, else imm)")
    ev.add_argument("--no-log", action="store_true", help="print the metrics only; log nothing to MLflow")
    _tracking_only(ev)

    imp = sub.add_parser(
        "import",
        help="convert an official IMM checkpoint into this project's checkpoint (the paper's yardstick)",
        description="Read an official IMM checkpoint (its EMA network) or a state dict with its key names, map "
                    "every weight onto our network (CIFAR-10: model.arch=ddpmpp with the cifar10 config; ImageNet-256: "
                    "DiT-XL/2 with the imagenet256_dit config) and write OUT/checkpoint.pt, ready for `imm-orch eval` "
                    "and `imm-orch sample`.",
        epilog=IMPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("path", help="the official file: a local path or s3:// URI")
    imp.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                     help="what the file is: official-cifar10, official-imagenet256-ts-a2 (imagenet256_ts_a2.pkl) "
                          "or official-imagenet256-s-a1 (imagenet256_s_a1.pkl)")
    imp.add_argument("--out", required=True, help="folder to write checkpoint.pt into (a local path)")
    imp.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                     help="stored with the checkpoint, e.g. data.name=cifar10:PATH eval.inception_weights=PATH")
    _output_flags(imp)

    enc = sub.add_parser(
        "encode",
        help="encode images into a latent set (VAE on Ray Data) for latents:PATH",
        description="Run the VAE encoder over every image under SOURCE as a Ray Data batch-inference job (actors, a "
                    "GPU each where the cluster has them) and write .npy shards and a manifest (imm/latents.py) to "
                    "--out, a folder or an s3:// prefix.",
        epilog=ENCODE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enc.add_argument("source", help="folder:PATH, PATH a folder or s3://bucket/prefix of images (subfolders: classes)")
    enc.add_argument("--vae", required=True, help="the AutoencoderKL folder: a local path or s3:// prefix")
    enc.add_argument("--out", required=True, help="where the latent set goes: a folder or s3:// prefix")
    enc.add_argument("--resolution", type=int, default=256, help="center-crop and resize to this square (default 256)")
    enc.add_argument("--shard-size", type=int, default=4096, help="latents per shard (default 4096)")
    enc.add_argument("--heldout", type=int, default=1000, help="images set aside for the metrics (default 1000)")
    enc.add_argument("--batch-size", type=int, default=64, help="images per VAE batch (default 64)")
    enc.add_argument("--workers", type=int, default=None, help="VAE actors (default: one per GPU, else CPUs / 2)")
    enc.add_argument("--posterior", choices=("mean", "sample"), default="mean",
                     help="store the VAE posterior's mean, or its mean and std for a draw at each read as the official "
                          "IMM training does (default: mean)")
    enc.add_argument("--normalisation", choices=("own", "official"), default="own",
                     help="per-channel mean and std: the set's own, or the official ImageNet-256 constants that the "
                          "released weights expect (default: own)")
    enc.add_argument("--address", default=None,
                     help="Ray cluster: auto, HOST:6379 or ray://HOST:10001 (default: start a local Ray)")
    _output_flags(enc)

    ui = sub.add_parser(
        "ui",
        help="the MLflow UI on this project's tracking store",
        description="Start `mlflow server` on the tracking store (the embedded SQLite file by default), serving its "
                    "artifacts; Ctrl-C stops it.",
        epilog=UI_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="interface to bind (default 127.0.0.1: this machine only; the UI has no authentication)")
    _tracking_only(ui)
    return parser


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="URI",
                        help="runs:/RUN_ID, models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint path or s3:// URI")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and MLflow's own log lines here (default: in <storage.root>/logs/)")


def _tracking_only(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./imm-runs/mlflow.db)")
    _output_flags(parser)


def prepare_train(args):
    """(plan, kill switch): the config loaded and validated, the run planned; no Ray yet."""
    from imm.config import load_config
    from orchestrator import cluster, storage, tracking
    from orchestrator.launch import plan_run
    from orchestrator.worker import KillSwitch

    overridden = tuple(o.split("=", 1)[0].lstrip("+~") for o in args.overrides)  # shown as MLflow params
    if args.best_of:
        from orchestrator.best import best_of

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
    if args.address is None:
        cluster.check_local(plan.cfg)
    check_cluster_storage(plan.cfg, plan.tracking_uri)
    tracking.check_reachable(plan.tracking_uri)
    if not args.dry_run:
        storage.check_s3(plan.cfg)
    return plan, kill


def check_cluster_storage(cfg, tracking_uri: str, study: str | None = None, nodes: int = 1) -> None:
    """In a Ray job, or connected to a cluster of `nodes` > 1: every store must be shared (storage.check_shared)."""
    from orchestrator import cluster, storage

    if cluster.in_job():
        where = "in a Ray job"
    elif nodes > 1:
        where = f"on a {nodes}-node cluster"
    else:
        return
    storage.check_shared(cfg, tracking_uri=tracking_uri, where=where, in_job=cluster.in_job(), study_url=study)


def run_train(args, plan, kill, out=None) -> int:
    out = out or terminal.out()
    from imm.config import to_yaml
    from imm.evaluate import QUALITY_PREFIXES
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
        check_cluster_storage(plan.cfg, plan.tracking_uri, nodes=cluster.alive_nodes())  # now that its size is known
        t_ray = time.perf_counter() - t0
        result = launch(plan, ray_address=address, kill=kill, stream=out)
    wall = time.perf_counter() - t0
    quality = " ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if k.startswith(QUALITY_PREFIXES))
    workers = f", worker start-up {result.startup_s:.1f}s" if result.startup_s is not None else ""
    print(f"done in {wall:.1f}s (Ray start-up {t_ray:.1f}s{workers}, fit {result.fit_s:.1f}s)  {quality}".rstrip(), file=out)
    print(f"final checkpoint: {result.checkpoint}", file=out)
    print(f"mlflow run id: {result.run_id}", file=out, flush=True)
    return 0


def prepare_sweep(args):
    """The sweep loaded and validated (the base config with the command's overrides); no Ray yet."""
    from orchestrator import cluster, storage, tracking
    from orchestrator.sweep import study_setting
    from orchestrator.sweep_config import load_sweep

    sweep = load_sweep(args.sweep, base_overrides=args.overrides)
    for flag, value in (("--trials", args.trials), ("--max-concurrent", args.max_concurrent)):
        if value is not None and value < 1:
            raise ValueError(f"{flag}: {value} is out of range (allowed: >= 1)")
    if args.max_concurrent is not None:
        sweep.spec.max_concurrent = args.max_concurrent
    if args.address is None:
        cluster.check_local(sweep.base)
    uri = tracking.tracking_uri(sweep.base, args.tracking_uri)
    check_cluster_storage(sweep.base, uri, study_setting(sweep))
    if not args.dry_run:
        tracking.check_reachable(uri)
        storage.check_s3(sweep.base)
        import optuna

        from orchestrator.sweep import check_study

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        check_study(sweep, resume=args.resume)
    return sweep


def run_sweep(args, sweep, out=None) -> int:
    out = out or terminal.out()
    from imm.config import to_yaml
    from orchestrator import cluster, tracking
    from orchestrator.sweep import SweepRunner, redact, storage_url, study_setting, trial_resources

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
    with cluster.connect(args.address, num_workers=workers, stream=out) as address:
        check_cluster_storage(sweep.base, tracking.tracking_uri(sweep.base, args.tracking_uri), study_setting(sweep),
                              nodes=cluster.alive_nodes())
        runner = SweepRunner(sweep, ray_address=address, tracking_uri=args.tracking_uri, experiment=args.experiment,
                             resume=args.resume, trials=args.trials, stream=out)
        result = runner.run()
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


def run_status(args, out=None) -> int:
    import optuna

    from orchestrator.sweep import open_storage, redact, storage_url
    from orchestrator.sweep_config import load_sweep
    from orchestrator.sweep_report import format_status

    out = out or terminal.out()
    if args.sweep.endswith((".yaml", ".yml")):
        sweep = load_sweep(args.sweep)
        name, url = sweep.name, args.storage or storage_url(sweep)
    else:
        from imm.config import StorageConfig
        from orchestrator.sweep import JOURNAL_FILE

        name = args.sweep
        url = args.storage or os.environ.get("IMM_OPTUNA_STORAGE") or \
            f"journal:{Path(StorageConfig.root).resolve() / JOURNAL_FILE}"
    if url.startswith("journal:") and not Path(url[len("journal:"):]).is_file():
        raise ValueError(f"no study storage at {url[len('journal:'):]} (pass --storage, or the sweep's YAML file)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))]
        raise ValueError(f"no sweep {name!r} in {redact(url)} (sweeps there: {names})") from None
    print(format_status(study, redact(url)), file=out)
    return 0


def run_promote(args, out=None) -> int:
    from orchestrator import tracking
    from orchestrator.promote import promote

    out = out or terminal.out()
    uri = tracking.default_tracking_uri(args.tracking_uri)
    tracking.check_reachable(uri)
    p = promote(uri, metric=args.metric, run_id=args.run_id, sweep=args.sweep, mode=args.mode, alias=args.alias,
                model_name=args.model_name)
    how = "registered as new version" if p.new_version else "already registered as version"
    print(f"run {p.run_id} ({p.metric} = {p.value:.6g}) {how} {p.version} of {p.model_name!r}", file=out)
    moved = f" (it pointed at version {p.previous_version})" if p.previous_version not in (None, p.version) else ""
    print(f"alias {p.alias!r} -> version {p.version}{moved}", file=out)
    print(f"model uri: {p.uri}", file=out, flush=True)
    return 0


def run_sample(args, out=None) -> int:
    from imm.sample import reference_points, save_samples
    from orchestrator.models import load_model

    out = out or terminal.out()
    if Path(args.out).suffix not in (".npy", ".png"):
        raise ValueError(f"--out: unknown extension {Path(args.out).suffix!r}; use .npy or .png")
    _check_model_store(args)
    gen = load_model(args.model, tracking_uri=args.tracking_uri, device=args.device)
    x = gen.sample(args.n, args.steps, args.seed, sampler=args.sampler, label=args.label, cfg_scale=args.cfg_scale)
    reference = reference_points(gen.cfg) if args.out.endswith(".png") and x.ndim == 2 else None
    save_samples(x, args.out, title=f"{gen.config['method']}, {args.steps} step(s)", reference=reference)
    print(f"wrote {args.n} samples ({args.steps} step(s), shape {tuple(x.shape[1:])}) to {args.out}", file=out)
    return 0


def _check_model_store(args) -> None:
    """A model named by MLflow URI needs the tracking server: say so at once if it does not answer."""
    from orchestrator import tracking

    if args.model.startswith(("runs:/", "models:/")):
        tracking.check_reachable(tracking.default_tracking_uri(args.tracking_uri))


def run_eval(args, out=None) -> int:
    from orchestrator.evaluation import evaluate_model

    out = out or terminal.out()
    _check_model_store(args)
    steps, overrides = [], list(args.overrides)
    for part in ",".join(args.steps).split(","):  # `--steps 1 2 key=value`: argparse hands the override to --steps
        if "=" in part:
            overrides.append(part)
        elif part.isdigit() and int(part) >= 1:
            steps.append(int(part))
        else:
            raise ValueError(f"--steps: {part!r} is not a step count (allowed: integers >= 1)")
    if args.n is not None and args.n < 2:
        raise ValueError(f"--n: {args.n} is out of range (allowed: >= 2)")
    res = evaluate_model(args.model, steps=steps, n=args.n, seed=args.seed, overrides=overrides,
                         tracking_uri=args.tracking_uri, experiment=args.experiment, device=args.device,
                         log=not args.no_log)
    for name, value in sorted(res.metrics.items()):
        print(f"{name:18s} {value:.6g}", file=out)
    extractor = res.tags.get("imm.eval.extractor", "none")
    print(f"features: {res.tags['imm.eval.features']} ({extractor})", file=out)
    if res.run_id:
        print(f"mlflow run id: {res.run_id}", file=out, flush=True)
    return 0


def ui_command(args) -> list[str]:
    """The `mlflow server` command line for the store (checked: it must exist and not be a server already)."""
    from orchestrator import tracking

    uri = tracking.default_tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://", "databricks")):
        raise ValueError(f"--tracking-uri: {uri} is a tracking server already; open it in a browser")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port: {args.port} is out of range (allowed: 1-65535)")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    if uri.startswith("sqlite:///"):
        if not Path(uri[len("sqlite:///"):]).is_file():
            raise FileNotFoundError(f"no MLflow store at {uri[len('sqlite:///'):]} yet: run `imm-orch train` or "
                                    "`imm-orch sweep` first, or pass --tracking-uri")
        cmd += ["--artifacts-destination", tracking.artifact_root(uri)]  # new experiments' artifacts as imm-orch puts them
    return cmd


def run_ui(args, out=None) -> int:
    from orchestrator.processes import Stopped, owned_process

    out = out or terminal.out()
    cmd = ui_command(args)
    print(f"MLflow UI: http://{args.host}:{args.port}  (store {cmd[cmd.index('--backend-store-uri') + 1]}; "
          "Ctrl-C stops it)", file=out, flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {args.host}: anyone who can reach this port can read and change runs", file=terminal.err())
    for line in ui_links(cmd[cmd.index("--backend-store-uri") + 1], f"http://{args.host}:{args.port}/"):
        print(line, file=out, flush=True)
    try:  # the server and its workers end with this command, however it ends (orchestrator/processes.py)
        with owned_process(cmd) as server:
            return server.wait()
    except KeyboardInterrupt:
        return 0
    except Stopped as e:
        return e.code


def ui_links(store: str, base: str) -> list[str]:
    """Deep links into the UI: each experiment's runs table, the latest sweep (its trials best first, its sample
    grid) and the model registry. Best effort: an empty or unreadable store gives none."""
    from orchestrator import sweep, tracking

    try:
        mlc = tracking.client(store)
        exps = [e for e in mlc.search_experiments() if mlc.search_runs([e.experiment_id], max_results=1)]
        lines = [f"  runs of {e.name!r}: {base}{tracking.view_link(e.experiment_id)}" for e in exps]
        parents = mlc.search_runs([e.experiment_id for e in exps], f"tags.`{sweep.ROLE_TAG}` = 'parent'", max_results=1,
                                  order_by=["attributes.start_time DESC"]) if exps else []
        if parents:
            p = parents[0]
            key = sweep.view_key(p.data.tags[sweep.SWEEP_TAG], p.data.tags[sweep.SWEEP_ID_TAG])
            lines += [f"  latest sweep {p.info.run_name!r}, its trials best first: "
                      f"{base}{tracking.view_link(p.info.experiment_id, key)}",
                      f"  ... and its samples, a row per trial: "
                      f"{base}#/experiments/{p.info.experiment_id}/runs/{p.info.run_id}/artifacts/sweep_samples.png"]
        if mlc.search_registered_models(max_results=1):
            lines.append(f"  registered models: {base}#/models")
    except Exception:
        return []
    return lines


def run_submit(args, out=None) -> int:
    from orchestrator import submit

    out = out or terminal.out()
    if not args.cluster:
        raise ValueError("--cluster: the Ray dashboard to submit to, e.g. --cluster http://HEAD:8265")
    job = submit.plan_submission(args)
    client = submit.connect(args.cluster)
    job_id = submit.submit(client, job, out)
    if not args.follow:
        return 0
    try:
        return submit.follow(client, job_id, out)
    except KeyboardInterrupt:
        print(f"imm-orch: stopped following; the job goes on (ray job stop --address {args.cluster} {job_id} stops it)",
              file=terminal.err())
        return 130


def run_import(args, out=None) -> int:
    import torch

    from imm.convert import import_official
    from imm.remote import local_copy
    from imm.train import CHECKPOINT_FILE

    out = out or terminal.out()
    checkpoint = import_official(args.source, local_copy(args.path), args.overrides)
    folder = Path(args.out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, folder / CHECKPOINT_FILE)
    n = sum(v.numel() for k, v in checkpoint["ema"].items() if k != "sigma_d")
    print(f"imported {checkpoint['imported_from']}: {len(checkpoint['ema']) - 1} tensors, {n:,} parameters, "
          f"model.arch={checkpoint['config']['model']['arch']} -> {folder / CHECKPOINT_FILE}", file=out)
    paper = "--steps 1 2 --n 50000   (the paper: FID 3.20 and 1.98)" if args.source == "official-cifar10" else \
        "--steps 1 2 4 8 --n 50000   (the paper, CFG 1.5: FID 8.05, 3.99, 2.51, 1.99)"
    print(f"next: imm-orch eval --model {folder} {paper}", file=out)
    return 0


def run_encode(args, out=None) -> int:
    from orchestrator.cluster import connect
    from orchestrator.encode import check_inputs, encode

    out = out or terminal.out()
    for flag in ("resolution", "shard_size", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')}: {getattr(args, flag)} must be >= 1")
    if args.heldout < 0:
        raise ValueError(f"--heldout: {args.heldout} must be >= 0")
    check_inputs(args.source, args.vae, args.out)  # before Ray starts
    with connect(args.address, stream=out):
        encode(args.source, args.vae, args.out, resolution=args.resolution, shard_size=args.shard_size,
               heldout=args.heldout, batch_size=args.batch_size, workers=args.workers, posterior=args.posterior,
               normalisation=args.normalisation, say=lambda line: print(line, file=out, flush=True))
    print(f"next: imm-orch train imagenet256_dit data.name=latents:{args.out}", file=out)
    return 0


MODEL_COMMANDS = {"promote": run_promote, "sample": run_sample, "eval": run_eval, "ui": run_ui, "import": run_import,
                  "encode": run_encode}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options may come before, between or after the key=value overrides."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = list(getattr(args, "overrides", [])) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    """The command, printing through sys.stdout/sys.stderr (as tests and library callers see it)."""
    return dispatch(parse_args(argv))


def entry() -> int:
    """The `imm-orch` program: the command with Ray's and MLflow's own output in a log file (`--verbose`: here)."""
    args = parse_args(sys.argv[1:])  # --help and usage errors reach the terminal
    if args.verbose:
        return dispatch(args)
    log = log_file(args)
    with terminal.quiet(log):
        if args.command in ("train", "sweep") and not getattr(args, "dry_run", False):
            print(f"log: {log} (Ray's and MLflow's own messages; --verbose shows them here)", file=terminal.out())
        try:
            code = dispatch(args)
        except Exception as e:  # not one of ours: the traceback goes to the log, one line here
            import traceback

            traceback.print_exc()
            if args.debug:
                traceback.print_exc(file=terminal.err())
            print(f"imm-orch: unexpected error: {type(e).__name__}: {str(e).strip()[:300]} (traceback in {log})",
                  file=terminal.err())
            code = 1
    if log.is_file() and log.stat().st_size == 0:
        log.unlink()
    elif args.command not in ("train", "sweep") and re.search(r"WARNING|ERROR|Traceback", log.read_text(errors="replace")):
        print(f"imm-orch: Ray's and MLflow's warnings are in {log}", file=terminal.err())
    return code


def log_file(args) -> Path:
    """`<storage.root>/logs/imm-orch-COMMAND-TIME-PID.log`: the run's or sweep's storage.root, else the default."""
    from imm.config import StorageConfig, load_config
    from orchestrator.sweep_config import load_sweep

    root = StorageConfig.root
    try:
        if args.command == "sweep":
            root = load_sweep(args.sweep, base_overrides=args.overrides).base.storage.root
        elif args.command == "train":
            root = load_config(args.config, args.overrides).storage.root
    except Exception:  # the command itself reports the mistake, on the terminal
        pass
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root).expanduser().resolve() / "logs" / f"imm-orch-{args.command}-{stamp}-{os.getpid()}.log"


def dispatch(args) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # tqdm bars for each model download
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run at" after each run we print
    from imm.config import ConfigError

    if args.command == "submit":
        try:
            return run_submit(args)
        except (ConfigError, FileNotFoundError, ValueError, ConnectionError) as e:
            return _user_error(e, args.debug)
    if args.command == "status" or args.command in MODEL_COMMANDS:
        from imm.sample import as_flag_error

        try:
            return MODEL_COMMANDS.get(args.command, run_status)(args)
        except (ConfigError, FileNotFoundError, ValueError) as e:
            return _user_error(ValueError(as_flag_error(e)), args.debug)
    try:
        if args.command == "sweep":
            sweep = prepare_sweep(args)
            run = lambda: run_sweep(args, sweep)  # noqa: E731
            resume_hint = "rerun with --resume to continue"
        else:
            plan, kill = prepare_train(args)
            run = lambda: run_train(args, plan, kill)  # noqa: E731
            resume_hint = "rerun the same command to resume"
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return _user_error(e, args.debug)
    try:
        return run()
    except KeyboardInterrupt as e:
        at = f" at step {e.step}" if getattr(e, "step", None) is not None else ""
        print(f"imm-orch: interrupted{at} ({resume_hint})", file=terminal.err())
        return 130
    except SystemExit as e:  # Ray's driver turns SIGTERM (`ray job stop`, a node shutting down) into exit(15)
        if e.code != 15:
            raise
        print(f"imm-orch: stopped by SIGTERM ({resume_hint})", file=terminal.err())
        return 143
    except (ConfigError, ConnectionError) as e:
        return _user_error(e, args.debug)
    except Exception as e:
        from orchestrator.sweep import SweepFailed

        if isinstance(e, SweepFailed) and not args.debug:
            print(f"imm-orch: sweep stopped: {e} (fix it, then rerun with --resume)", file=terminal.err())
            return 1
        if args.debug or not _is_training_failure(e):
            raise
        from orchestrator.sweep import root_cause

        print(f"imm-orch: training failed: {root_cause(e)} ({resume_hint}; --debug for details)", file=terminal.err())
        return 1


def _user_error(e: Exception, debug: bool) -> int:
    if debug:
        raise e
    print(f"imm-orch: error: {e}", file=terminal.err())
    return 2


def _is_training_failure(e: Exception) -> bool:
    try:
        from ray.train import TrainingFailedError
    except ImportError:
        return False
    return isinstance(e, TrainingFailedError)


if __name__ == "__main__":
    sys.exit(entry())
