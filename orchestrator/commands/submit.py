"""`imm-orch submit`: a sweep or a run as a Ray job on a cluster (it outlives this machine)."""

from __future__ import annotations

import os

from orchestrator import terminal
from orchestrator.commands import Command, overrides_arg, register, tracking_flags

EXAMPLES = """\
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


def arguments(parser) -> None:
    parser.add_argument("target", metavar="SWEEP.yaml|CONFIG", help="a sweep file, or a run config (file or built-in name)")
    overrides_arg(parser, "run-config overrides")
    parser.add_argument("--cluster", default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                        help="the Ray dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    parser.add_argument("--follow", action="store_true", help="stream the driver's output; exit with its code")
    parser.add_argument("--resume", action="store_true", help="sweeps: continue the stored study (after the job died)")
    parser.add_argument("--trials", type=int, default=None, help="sweeps: total trials")
    parser.add_argument("--max-concurrent", type=int, default=None, help="sweeps: trials at once")
    parser.add_argument("--name", default=None, help="runs: the run name (the same name resumes the run)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment")
    parser.add_argument("--autoscaling", action="store_true",
                        help="an autoscaler adds nodes: skip the check that the trial fits the nodes alive now")
    parser.add_argument("--working-dir", default=None, help="the folder shipped with the job (default: this checkout)")
    tracking_flags(parser)


def run(args) -> int:
    from orchestrator.infra import submit

    out = terminal.out()
    if not args.cluster:
        raise ValueError("--cluster: the Ray dashboard to submit to, e.g. --cluster http://HEAD:8265")
    job = submit.plan_submission(args)
    client = submit.connect(args.cluster)
    if not args.autoscaling:
        submit.check_fit(args.cluster, job)
    job_id = submit.submit(client, job, out)
    if not args.follow:
        return 0
    try:
        return submit.follow(client, job_id, out)
    except KeyboardInterrupt:
        print(f"imm-orch: stopped following; the job goes on (ray job stop --address {args.cluster} {job_id} stops it)",
              file=terminal.err())
        return 130


COMMAND = register(Command(
    name="submit",
    help="a sweep or a run as a Ray job on a cluster (it outlives this machine)",
    description="Check a sweep file or run config as the cluster will see it, then submit it as a Ray job through "
                "Ray's JobSubmissionClient; prints the job id and the commands to follow, inspect and stop it.",
    examples=EXAMPLES,
    arguments=arguments,
    run=run,
    overrides=True,
))
