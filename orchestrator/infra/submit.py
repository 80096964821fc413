"""`imm-orch submit`: a sweep or a training run as a Ray job, through Ray's own `JobSubmissionClient`.

The job's driver is this project's command line (`python -m orchestrator.cli sweep|train ... --address auto`),
run by Ray on the cluster's head node in a working dir that holds this checkout's code, so a sweep outlives
the laptop that submitted it. What the job would find wrong is checked here first: the run config or sweep
file, the storage rules of a cluster (`preflight.check_shared`: in a job `./imm-runs` is a temporary folder Ray
deletes) and the cluster's address, so a mistake costs one line and no job.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from imm.checks import check_value
from imm.config import ConfigError
from orchestrator import terminal

# Never shipped to the cluster: local results, data and weights (Ray excludes .git and .venv itself and honours
from orchestrator.track import provenance

# .gitignore).
EXCLUDES = ["venv", "imm-runs", "mlruns", "mlartifacts", "data", "__pycache__", ".pytest_cache",
            ".ruff_cache", "*.pt", "*.pth", "*.ckpt", "*.safetensors", "*.npy", "*.npz", "*.db", "*.journal"]
# Defaults the submitting machine may set that the job should share (the stores checked here are passed explicitly).
FORWARDED_ENV = ("IMM_METRICS_CACHE", "IMM_MLFLOW_ARTIFACTS")
STOP_GRACE_S = 30
TOKEN_HELP = ("set RAY_AUTH_TOKEN to the cluster's token, or RAY_AUTH_TOKEN_PATH to a file holding it "
              "(the head node writes it to ~/.ray/auth_token)")


@dataclass
class Submission:
    """A validated job: what runs (`entrypoint`) and with what (`runtime_env`), under a readable id."""

    kind: str  # "sweep" or "train"
    name: str  # the sweep's or the run's name
    job_id: str
    entrypoint: str
    runtime_env: dict
    tracking_uri: str
    study: str | None = None  # the sweep's study storage, for `imm-orch status`
    metadata: dict = field(default_factory=dict)
    per_worker: dict = field(default_factory=dict)  # each worker's Ray resources (`orchestrator.infra.fit`)
    workers: int = 1
    fit_field: str = "trainer.num_workers"  # the setting that asks for them, for the fit check's message


def is_sweep_file(target: str) -> bool:
    """A YAML file with a search space is a sweep; anything else names a run config."""
    from imm.config import load_yaml

    p = Path(target)
    return p.suffix in (".yaml", ".yml") and p.is_file() and "space" in load_yaml(p)


def checkout_root() -> Path | None:
    """The checkout this code runs from (a folder with pyproject.toml above `orchestrator/`), or None (installed)."""
    root = Path(__file__).resolve().parents[2]  # orchestrator/infra/submit.py -> the checkout
    return root if (root / "pyproject.toml").is_file() else None


def plan_submission(args) -> Submission:
    """Load and check everything the job will use, as `imm-orch sweep|train` would in the job; build the job."""
    from orchestrator.infra import preflight
    from orchestrator.track import tracking

    working_dir = Path(args.working_dir).resolve() if args.working_dir else (checkout_root() or Path.cwd())
    if not working_dir.is_dir():
        raise ConfigError(f"--working-dir: {working_dir} is not a folder")
    flags = ["--address", "auto"]
    for flag, value in (("--trials", args.trials), ("--max-concurrent", args.max_concurrent)):
        if value is not None:
            check_value(flag, value, 1, None)
    if is_sweep_file(args.target):
        from orchestrator.run.launch import plan_run
        from orchestrator.sweep.spec import load_sweep
        from orchestrator.sweep.study import storage_url, study_setting

        if args.name:
            raise ValueError("--name: a sweep is named by its file's `name`")
        sweep = load_sweep(args.target, base_overrides=args.overrides)
        kind, name, cfg, study_raw = "sweep", sweep.name, sweep.base, study_setting(sweep)
        uri = tracking.tracking_uri(cfg, args.tracking_uri)
        preflight.check_shared(cfg, tracking_uri=uri, where="in a Ray job", in_job=True, study_url=study_raw)
        study = storage_url(sweep)
        refuse_credentials("storage" if sweep.spec.storage else "IMM_OPTUNA_STORAGE", study)
        plan = plan_run(cfg, name="resources")
        flags += ["--resume"] if args.resume else []
        flags += ["--trials", str(args.trials)] if args.trials else []
        flags += ["--max-concurrent", str(args.max_concurrent)] if args.max_concurrent else []
    else:
        from imm.config import load_config
        from orchestrator.run.launch import plan_run

        for flag, value in (("--resume", args.resume), ("--trials", args.trials), ("--max-concurrent", args.max_concurrent)):
            if value:
                raise ValueError(f"{flag}: only for a sweep file (a run resumes when submitted again with its name)")
        plan = plan_run(load_config(args.target, args.overrides), name=args.name, tracking_uri=args.tracking_uri)
        kind, name, cfg, study, study_raw, uri = "train", plan.name, plan.cfg, None, None, plan.tracking_uri
        preflight.check_shared(cfg, tracking_uri=uri, where="in a Ray job", in_job=True)
        flags += ["--name", plan.name]  # a resolved config's hash would differ on the cluster (its env): pin the name
    refuse_credentials("--tracking-uri", uri)
    for override in args.overrides:
        refuse_credentials(override.split("=", 1)[0], override.split("=", 1)[-1])
    target = _in_working_dir(args.target, working_dir)
    # The job uses the stores checked here, whatever the cluster's environment says.
    pinned = [f"storage.ray_storage={cfg.storage.ray_storage or cfg.storage.root.rstrip('/') + '/ray'}"]
    flags += ["--tracking-uri", uri]
    flags += ["--experiment", args.experiment] if args.experiment else []
    entrypoint = shlex.join(["python", "-m", "orchestrator.cli", kind, target, *args.overrides, *pinned, *flags])
    runtime_env: dict = {"working_dir": str(working_dir), "excludes": EXCLUDES}
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    # `ray job stop` SIGKILLs the driver this long after its SIGTERM (Ray's default, 3 s, is too short to close
    # the running trials' MLflow runs on a busy head node); Ray's job supervisor reads it from the job's env.
    env["RAY_JOB_STOP_WAIT_TIME_S"] = os.environ.get("RAY_JOB_STOP_WAIT_TIME_S", str(STOP_GRACE_S))
    env.update(provenance.carried_commit())  # the job's working dir has no .git: its runs name this commit
    if study is not None:
        env["IMM_OPTUNA_STORAGE"] = study_raw  # no password in it (refuse_credentials): the nodes hold that
    runtime_env["env_vars"] = env
    code = Path(__file__).resolve().parents[2]  # the folder that holds imm/ and orchestrator/
    if not (code / "orchestrator").resolve().is_relative_to(working_dir):  # an installed package: ship the code too
        runtime_env["py_modules"] = [str(code / "imm"), str(code / "orchestrator")]
    job_id = f"imm-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    return Submission(kind=kind, name=name, job_id=job_id, entrypoint=entrypoint, runtime_env=runtime_env,
                      tracking_uri=uri, study=study, metadata={"imm.kind": kind, "imm.name": name},
                      per_worker=plan.resources_per_worker, workers=plan.num_workers,
                      fit_field="resources" if kind == "sweep" else "trainer.num_workers")


CREDENTIALS_HELP = ("drop it from the URL and keep it where the nodes and this machine read it themselves: "
                    "PGPASSFILE or ~/.pgpass for PostgreSQL, MLFLOW_TRACKING_PASSWORD for MLflow "
                    "(docker/README.md, \"Credentials\")")


def refuse_credentials(setting: str, value: str) -> None:
    """A one-line ConfigError if `value` holds a password (a URL's user:password@): a job's entrypoint and runtime
    env are shown to anyone who can list the cluster's jobs (`ray job list`, the dashboard)."""
    from orchestrator.sweep.study import redact

    url = urlparse(value) if "://" in value else None
    try:
        password = url.password if url is not None else None
    except ValueError:
        password = None
    if password:
        raise ConfigError(f"{setting}: {redact(value)} holds a password, which would travel with the job "
                          f"(`ray job list` and the dashboard show it); {CREDENTIALS_HELP}")


def _in_working_dir(target: str, working_dir: Path) -> str:
    """The config or sweep file as the job sees it: relative to the working dir (a built-in name stays as is)."""
    p = Path(target)
    if not p.exists():
        return target  # a built-in config or sweep name; the loaders have said whether it exists
    try:
        return str(p.resolve().relative_to(working_dir))
    except ValueError:
        raise ConfigError(f"{target}: the job can only read files inside its working dir {working_dir}; move the "
                          "file there or pass --working-dir") from None


def check_fit(client_address: str, sub: Submission) -> None:
    """Refuse (one line) a job whose trial no node set of the cluster can hold (`orchestrator.infra.fit`)."""
    from orchestrator.infra import fit

    fit.check(sub.per_worker, sub.workers, fit.cluster_nodes(client_address), field=sub.fit_field)


def connect(address: str):
    """Ray's JobSubmissionClient for the dashboard at `address`, or a one-line error within seconds."""
    import logging

    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"--cluster: {address!r} is not a Ray dashboard address; use http://HEAD:8265")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise ConnectionError(f"--cluster: no Ray dashboard answers at {address} ({e.strerror or e}); is the head node "
                              "up and its dashboard port reachable from here?") from None
    _token_mode()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray").setLevel(logging.WARNING)  # the client's INFO lines: packaging, uploads, websockets

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise ConnectionError(f"--cluster: {address} asks for a token: {TOKEN_HELP}") from None
    except (ConnectionError, RuntimeError) as e:
        raise ConnectionError(f"--cluster: {address}: {str(e).splitlines()[0]}") from None


def _token_mode() -> None:
    """Send the cluster's token when one is at hand: Ray's client sends it only with RAY_AUTH_MODE=token."""
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
        (Path.home() / ".ray" / "auth_token").is_file()
    if has_token:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


AGENT_WAIT_S = 60  # a cluster that has just started has no job agent for a few seconds


def submit(client, sub: Submission, out=None) -> str:
    out = out or terminal.out()
    from ray.exceptions import AuthenticationError

    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(entrypoint=sub.entrypoint, submission_id=sub.job_id, runtime_env=sub.runtime_env,
                                       metadata=sub.metadata)
            break
        except AuthenticationError:
            raise ConnectionError(f"--cluster: the cluster refused the job: {TOKEN_HELP}") from None
        except RuntimeError as e:  # a head that has just started: "No available agent to submit job, ... try again later"
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise ConnectionError(f"--cluster: the cluster did not take the job: {str(e).splitlines()[0]}") from None
            time.sleep(2)
    address = client.get_address()
    print(f"submitted {sub.kind} {sub.name!r} as Ray job {job_id} to {address}", file=out)
    print(f"  driver:   {sub.entrypoint}", file=out)
    print(f"  logs:     ray job logs --address {address} --follow {job_id}", file=out)
    print(f"  status:   ray job status --address {address} {job_id}", file=out)
    print(f"  stop:     ray job stop --address {address} {job_id}", file=out)
    if sub.kind == "sweep":
        print(f"  trials:   imm-orch status {sub.name} --storage {sub.study}", file=out)
        print("  resume:   the same imm-orch submit command with --resume", file=out)
    print(f"  runs:     MLflow at {sub.tracking_uri}", file=out, flush=True)
    return job_id


def follow(client, job_id: str, out=None) -> int:
    """Stream the driver's output until the job ends; its exit code (0 when it SUCCEEDED, 130 when STOPPED)."""
    import asyncio

    out = out or terminal.out()

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    info = client.get_job_info(job_id)
    while not info.status.is_terminal():  # the log stream can close a moment before the status settles
        time.sleep(0.5)
        info = client.get_job_info(job_id)
    print(f"job {job_id}: {info.status}" + (f" ({info.message})" if info.status != "SUCCEEDED" else ""), file=out,
          flush=True)
    if info.status == "SUCCEEDED":
        return 0
    if info.status == "STOPPED":
        return 130
    return info.driver_exit_code if info.driver_exit_code and info.driver_exit_code > 0 else 1
