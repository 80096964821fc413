"""Which Ray a command runs on: an embedded local Ray started for the command, or an existing cluster.

With no `--address` a local Ray is started (and stopped afterwards) with enough logical CPUs for the
workers. `--address` takes `auto`, a head `host:6379` or a client `ray://host:10001`; this checkout's
`imm` and `orchestrator` packages are shipped with the job (`py_modules`; a `ray job submit` job
brings them in its working dir), the cluster supplies the rest (torch, ray, mlflow). A Ray already
initialised in this process (tests, notebooks) is used as is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imm.config import ConfigError
from orchestrator import terminal


def _worker_logs():
    """The job's workers log WARNING and above: progress comes from rank 0's reports, not from Ray Train's INFO
    lines (process group set up, each checkpoint created) that would otherwise reach the driver's terminal."""
    import ray

    return ray.LoggingConfig(encoding="TEXT", log_level="WARNING")


def trial_env() -> dict:
    """The runtime env of a task that fits a TorchTrainer: RAY_ADDRESS pinned to the connected cluster, and
    MLflow's "View run at" lines off (the driver prints its own; on a cluster a task's env is not the driver's).

    Ray Train's placement-group cleaner (a detached actor the Train controller starts) finds its cluster by
    address auto-detection, which fails when the machine runs a second Ray instance ("Found multiple active
    Ray instances"). It then never frees the placement group of a cancelled (pruned) trial, and the next trial
    waits forever for those CPUs. The controller and the cleaner inherit this env from the task.
    """
    import ray

    return {"env_vars": {"RAY_ADDRESS": ray.get_runtime_context().gcs_address,
                         "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}}


def _code_modules() -> list[str]:
    import imm
    import orchestrator

    return [str(Path(m.__file__).parent) for m in (imm, orchestrator)]


JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the driver of a submitted job


def in_job() -> bool:
    """True in the driver of a Ray job (`ray job submit`, `imm-orch submit`)."""
    return JOB_CONFIG_ENV in os.environ


def job_id() -> str | None:
    """The submission id of the Ray job this driver runs in (`imm-SWEEP-...`), or None outside a job."""
    import json

    try:
        return json.loads(os.environ[JOB_CONFIG_ENV])["metadata"]["job_submission_id"]
    except (KeyError, ValueError, TypeError):
        return None


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def nodes_sharing_a_temp_dir() -> str | None:
    """Why a job cannot run here, when several nodes of the cluster share one machine and one Ray temp dir.

    Each node's runtime-env agent unpacks a job's working dir into `<temp dir>/session_*/runtime_resources`, and
    removes the folder first (Ray installs working dirs with overwrite=True). With one temp dir for two raylets,
    the second node's agent deletes the folder the driver runs and imports from, when the job starts there: the
    job's first os.getcwd() fails (MLflow's client calls it). Separate machines, or `ray start --temp-dir` per
    node, never share the folder.
    """
    import ray

    by_dir: dict[tuple[str, str], int] = {}
    for n in ray.nodes():
        if n.get("Alive") and n.get("RayletSocketName"):
            key = (n.get("NodeManagerHostname", ""), str(Path(n["RayletSocketName"]).parent.parent.parent))
            by_dir[key] = by_dir.get(key, 0) + 1
    clash = next(((host, d, k) for (host, d), k in by_dir.items() if k > 1), None)
    if clash is None:
        return None
    host, temp_dir, k = clash
    return (f"--address: {k} Ray nodes on {host} share the temp dir {temp_dir}, so their runtime-env agents unpack "
            "this job's working dir into one folder and delete it under the running driver; give each node on a "
            "machine its own `ray start --temp-dir DIR`")


def driver_node_affinity():
    """A scheduling strategy for tasks that must live as long as this driver: on its node, never elsewhere.

    A sweep's trial task holds the trial's Ray Train controller, which Ray attaches to the task's node: on a
    worker node that dies, the controller would die with it, and the trial with it, instead of its workers
    being restarted elsewhere.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


@contextmanager
def connect(address: str | None = None, *, num_workers: int = 1, stream=None) -> Iterator[str]:
    """Yield a description of the Ray in use (for the `ray.address` tag); shut down only a Ray started here."""
    import ray

    if ray.is_initialized():
        yield address or f"existing ({ray.get_runtime_context().gcs_address})"
        return
    if address:
        # Inside a job the job's own runtime env (its working dir) already carries the code.
        runtime_env = None if in_job() else {"py_modules": _code_modules()}
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING, logging_config=_worker_logs(),
                     log_to_driver=not terminal.is_quiet())
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConnectionError(f"--address: cannot connect to Ray at {address!r}: {str(e).splitlines()[0]}") from e
        if in_job() and (clash := nodes_sharing_a_temp_dir()):
            ray.shutdown()
            raise ConfigError(clash)
        description = address
    else:
        # address="local": a Ray of our own even when `ray start` runs a cluster on this machine (ray.init() would
        # join that one, and refuse num_cpus). The dashboard also serves the state API that Ray Train's
        # placement-group cleaner polls.
        # Quiet (`imm-orch` without --verbose): the workers' output stays in Ray's session logs, not on this terminal.
        ctx = ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_workers), logging_level=logging.WARNING,
                       logging_config=_worker_logs(), log_to_driver=not terminal.is_quiet())
        description = f"embedded ({ray.get_runtime_context().gcs_address})"
        if ctx.dashboard_url:
            print(f"ray dashboard: http://{ctx.dashboard_url}", file=stream or terminal.out(), flush=True)
    try:
        yield description
    finally:
        ray.shutdown()
