"""A trial on Ray: what it needs, the task that runs it and what it returns to the driver, and its checkpoints.

A training trial is a Ray task that fits the trial's own `TorchTrainer` (as Tune's function trainable would) and
returns its final metrics; rank 0 pushes every report to a board the driver drains for the pruner and the
progress. A trial of a trained model is one task that evaluates it. Each task opens its own MLflow run (or finds
it again), with the tags and description the driver gave it (`TrialRecord`), and tells the driver its id: the
MLflow calls of a trial's start are made where the trial runs, not by the one driver of thousands of trials.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from typing import Any

from imm.config import ConfigError
from orchestrator.infra import storage
from orchestrator.run.launch import RunPlan, launch, open_tracked_run, plan_run
from orchestrator.run.printer import RestartNotice
from orchestrator.run.worker import KillSwitch
from orchestrator.sweep.space import Sweep
from orchestrator.track.tracking import shown_value


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial's task returns to the driver: its final metrics, how long its work took, its MLflow run."""

    metrics: dict[str, float]
    work_s: float  # the TorchTrainer's fit, or the evaluation
    run_id: str | None = None


@dataclass(frozen=True)
class TrialRecord:
    """What a trial's task needs to open its MLflow run, nested under the sweep's parent (`SweepRecords.trial_record`)."""

    exp_id: str
    tags: dict[str, str]
    description: tuple[str, str | None]  # text, image
    new: bool  # a trial just asked: no run of its name can exist yet


RUN_EVENT = "run"  # the board item a trial's task pushes first: {"event": "run", "run_id": ...}


def open_trial_run(plan: RunPlan, ray_address: str, record: TrialRecord, board=None) -> str:
    """Open the trial's MLflow run from its task and tell the driver its id through the board (waiting for that
    push, so that it comes before any report); its id. A task Ray runs again (its process died) finds the run its
    first attempt opened: the run's record in the trial's storage says there is one."""
    from orchestrator.run.board import Pusher
    from orchestrator.track import run_record

    new = record.new and run_record.read(plan.storage, plan.name) is None
    run_id, _ = open_tracked_run(plan, ray_address=ray_address, extra_tags=record.tags, stream=io.StringIO(),
                                 exp_id=record.exp_id, new=new, description=record.description)
    if board is not None:  # best effort: the id comes back with the task's result anyway
        pusher = Pusher(board)
        pusher.push({"event": RUN_EVENT, "run_id": run_id})
        pusher.flush(timeout=30)
    return run_id


@dataclass
class TrialRun:
    """A trial while it runs, as the driver sees it."""

    number: int
    trial: Any  # optuna.trial.Trial
    params: dict[str, Any]
    plan: RunPlan
    record: TrialRecord
    run_id: str | None  # known once its task has opened its run (a relaunched trial's: from the study)
    board: Any  # the board `Slot` rank 0 reports to; None for an evaluation
    ref: Any = None  # the Ray task's ObjectRef
    started: float = field(default_factory=time.perf_counter)
    last_step: int = 0
    restarts: RestartNotice | None = None

    @property
    def steps(self) -> int:
        return int(self.plan.cfg.train.steps)


def run_trial(plan: RunPlan, ray_address: str, record: TrialRecord, board, in_process: bool,
              kill: KillSwitch | None = None) -> TrialOutcome:
    """The Ray task of one training trial: open its MLflow run, train it here (one worker) or fit its
    TorchTrainer; it closes the run."""
    run_id = open_trial_run(plan, ray_address, record, board)
    result = launch(plan, ray_address=ray_address, run_id=run_id, board=board, stream=io.StringIO(),
                    in_process=in_process, kill=kill)
    return TrialOutcome(metrics=result.metrics, work_s=result.fit_s, run_id=run_id)


def run_eval_trial(model: str, plan: RunPlan, params: dict[str, Any], record: TrialRecord,
                   ray_address: str) -> TrialOutcome:
    """The Ray task of one trial of a sweep of a trained model: evaluate it with the trial's sample.* / eval.*
    params into the trial's MLflow run."""
    from omegaconf import OmegaConf

    from orchestrator.run.evaluation import evaluate_model

    t0 = time.perf_counter()
    run_id = open_trial_run(plan, ray_address, record)
    cfg = plan.cfg.eval
    # the sweep's eval settings (features, weights, reference, VAE, n_samples, seed, ...) over the model's, then
    # the trial's params; eval.steps, a list, goes as `steps`
    settings = {f"eval.{k}": v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if not isinstance(v, list)}
    overrides = [f"{k}={'null' if v is None else v}" for k, v in {**settings, **params}.items()]
    result = evaluate_model(model, steps=list(cfg.steps), overrides=overrides, tracking_uri=plan.tracking_uri,
                            run_id=run_id)
    return TrialOutcome(metrics=dict(result.metrics), work_s=time.perf_counter() - t0, run_id=run_id)


def start_task(sweep: Sweep, tr: TrialRun, ray_address: str):
    """Submit the trial's Ray task; its ObjectRef.

    A one-worker trial trains in its task (`orchestrator.run.in_process`), which takes the worker's resources; Ray
    retries it, up to trainer.max_failures times, when its process or node dies, and it resumes from its last
    checkpoint (an error the trial raises, a NaN loss say, is not retried: it would be raised again).
    A trial of several workers fits a TorchTrainer from a task that needs no CPU of its own (its workers ask for
    theirs) and runs beside the driver. An evaluation takes one worker's resources.
    """
    import ray

    from orchestrator.infra.cluster import driver_node_affinity, trial_env

    if sweep.spec.model:
        task = ray.remote(**pooled_task(sweep, retries=0))(run_eval_trial)
        return task.remote(sweep.spec.model, tr.plan, tr.params, tr.record, ray_address)
    if in_process(sweep):
        task = ray.remote(**pooled_task(sweep, retries=int(tr.plan.cfg.trainer.max_failures)))(run_trial)
        return task.remote(tr.plan, ray_address, tr.record, tr.board, True, KillSwitch.from_env())
    task = ray.remote(num_cpus=0, max_retries=0, runtime_env=trial_env(),
                      scheduling_strategy=driver_node_affinity())(run_trial)
    return task.remote(tr.plan, ray_address, tr.record, tr.board, False)


def stop_task(sweep: Sweep, tr: TrialRun, *, wait_s: float = 30.0) -> None:
    """Stop a running trial's task and return once it has ended (a pruned trial's CPUs go to the next one).

    One that trains in its task is interrupted (`ray.cancel` raises KeyboardInterrupt in it: its run is closed, and
    its process, with its imports, stays for the next trial); killed if it has not ended within `wait_s`. A
    TorchTrainer's task is killed outright: its controller and workers are actors it owns, which die with it.
    """
    import ray

    if in_process(sweep):
        ray.cancel(tr.ref, force=False)
        if ray.wait([tr.ref], timeout=wait_s)[0]:
            return
    ray.cancel(tr.ref, force=True)


def in_process(sweep: Sweep) -> bool:
    """Whether the sweep's trials train in their own task (one worker each) rather than a Ray Train worker group."""
    return not sweep.spec.model and int(sweep.base.trainer.num_workers) == 1


def pooled_task(sweep: Sweep, retries: int) -> dict[str, Any]:
    """The Ray options of a task that does a trial's work itself (trains one worker, or evaluates): the trial's
    resources, in a process that stays for the next such task (max_calls=0: Ray's default for a GPU task is a new
    process each time, its imports and CUDA context paid again)."""
    from orchestrator.infra.cluster import trial_env

    need = trial_resources(sweep)
    return {"num_cpus": need.get("CPU", 0), "num_gpus": need.get("GPU", 0), "max_retries": retries, "max_calls": 0,
            "runtime_env": trial_env()}


def _ready_for_a_trial() -> None:
    """What a trial's process imports, the lazy imports of its first evaluation and MLflow calls included (not the
    store itself: the driver may be creating it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    import imm.sampling.pictures  # noqa: F401
    import imm.training.loop  # noqa: F401
    import orchestrator.run.in_process  # noqa: F401
    import orchestrator.track.sample_grids  # noqa: F401
    import orchestrator.track.tracking  # noqa: F401


def warm_up(sweep: Sweep, n: int) -> list:
    """Start the processes of the first `n` trials now, while the driver opens the study and its MLflow runs: each
    pays its imports (torch, imm, MLflow: seconds) in a task of its own and then waits, in Ray's pool, for a trial.
    Only for trials that work in their task (`pooled_task`); their ObjectRefs."""
    import ray

    if sweep.spec.model or in_process(sweep):
        return [ray.remote(**pooled_task(sweep, retries=0))(_ready_for_a_trial).remote() for _ in range(n)]
    return []


def objective_values(sweep: Sweep, metrics: dict[str, float]) -> list[float]:
    """The objective's values among a trial's metrics; a ValueError names those missing or not finite."""
    missing = [m for m in sweep.metrics if not math.isfinite(metrics.get(m, math.nan))]
    if missing:
        raise ValueError(f"the run finished without a finite {missing} (logged: {sorted(metrics)})")
    return [shown_value(float(metrics[m])) for m in sweep.metrics]


def trial_resources(sweep: Sweep) -> dict[str, float]:
    per = plan_run(sweep.base, name="resources").resources_per_worker
    return {k: v * int(sweep.base.trainer.num_workers) for k, v in per.items()}


def concurrency(sweep: Sweep, cluster: dict[str, float], trials_left: int) -> tuple[int, str]:
    """(how many trials to run at once, why): max_concurrent, capped by what the cluster holds."""
    need = trial_resources(sweep)
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    fit = min(fits) if fits else trials_left
    have = ", ".join(f"{cluster.get(k, 0):g} {k}" for k in need) or "no resources asked"
    want = ", ".join(f"{v:g} {k}" for k, v in need.items())
    if fit < 1:
        raise ConfigError(f"resources: one trial needs {want}, the cluster has {have}; lower resources.workers "
                          "or cpus_per_worker/gpus_per_worker, or use a bigger cluster")
    limit = sweep.spec.max_concurrent or fit
    n = max(1, min(limit, fit, trials_left))
    return n, f"at most {n} at a time (max_concurrent={sweep.spec.max_concurrent}; each trial {want}; cluster {have})"


def discard_checkpoints(sweep: Sweep, run_name: str) -> bool:
    """Delete a finished trial's Ray checkpoints (the study never runs it again; what it made stays in its MLflow
    run); True if there were any."""
    return storage.ray_storage(sweep.base).delete_run(run_name)
