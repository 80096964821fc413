"""One training run as a Ray Train `TorchTrainer`, tracked in one MLflow run.

`plan_run` resolves everything a run needs without touching Ray (the run name, storage, tracking, the
resources), so `--dry-run` and validation happen before any cluster starts. `launch` then opens the
MLflow run on the driver, fits the trainer (workers run `orchestrator.run.worker.train_worker`) and closes
the run. The run name is deterministic (never a timestamp): Ray Train restores a run relaunched with the
same (storage_path, name), and the MLflow run is found again by the same two values.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imm.config import ConfigError
from orchestrator import terminal
from orchestrator.infra import storage
from orchestrator.infra.cluster import in_job
from orchestrator.run.board import Slot, new_board
from orchestrator.run.printer import ProgressPrinter, failure_callback, pump
from orchestrator.run.worker import KillSwitch, train_worker, worker_config
from orchestrator.track import provenance, run_record, tracking
from orchestrator.track.rank_zero import Superseded

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # the default in current Ray; older 2.x need the flag
# Ray Train's controller looks at its workers every 2 s by default, and a worker's report (with its checkpoint) and
# the run's end wait for that look: a tiny two-worker run took 31 s at 2 s and 20 s at 0.5 s (benchmarks/speed/
# train_poll.py). Train copies this variable from the driver to its controller; a user's own value wins.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class RunPlan:
    name: str
    cfg: DictConfig  # resolved, with `name` set
    storage: storage.RayStorage
    tracking_uri: str
    experiment: str
    param_keys: tuple[str, ...] = ()  # shown as MLflow params besides tracking.IDENTITY_KEYS
    title: str | None = None  # the MLflow run's display name (default: `name`)
    tags: dict[str, str] = field(default_factory=dict)  # more MLflow tags (a sweep's champion: its sweep, its parent)

    @property
    def num_workers(self) -> int:
        return int(self.cfg.trainer.num_workers)

    @property
    def resources_per_worker(self) -> dict[str, float]:
        """What each worker asks Ray for: trainer.cpus_per_worker CPUs, and trainer.gpus_per_worker GPUs with use_gpu."""
        tr = self.cfg.trainer
        res = {"CPU": float(tr.cpus_per_worker)}
        if tr.use_gpu:
            res["GPU"] = float(tr.gpus_per_worker)
        return {k: v for k, v in res.items() if v > 0}

    def describe(self) -> str:
        total = {k: v * self.num_workers for k, v in self.resources_per_worker.items()}
        per = ", ".join(f"{v:g} {k}" for k, v in self.resources_per_worker.items())
        tot = ", ".join(f"{v:g} {k}" for k, v in total.items())
        t, tr = self.cfg.train, self.cfg.trainer
        backend = "NCCL" if tr.use_gpu else "gloo"
        per_worker = t.batch_size // self.num_workers
        return "\n".join([
            f"run name:     {self.name}",
            f"workers:      {self.num_workers} x ({per}) = {tot}; DDP over {backend}; "
            f"per-worker batch {per_worker}",
            f"batch:        {t.batch_size} per update = {self.num_workers} x {per_worker}"
            + (f", each worker's in {t.accumulate} micro-batches of {per_worker // t.accumulate} (train.accumulate)"
               if t.accumulate > 1 else ""),
            f"retries:      trainer.max_failures={tr.max_failures}",
            f"checkpoints:  {self.storage.run_uri(self.name)} (every {t.checkpoint_every} steps, keep {t.keep_checkpoints})",
            f"tracking:     {self.tracking_uri} (experiment {self.experiment!r})",
        ])


def run_name(cfg: DictConfig, explicit: str | None = None) -> str:
    """--name, else the config's `name`, else method-dataset-<hash of the resolved config>: the same command
    gets the same name, so relaunching it resumes the run instead of starting over."""
    name = explicit or cfg.name
    if name:
        if not NAME_RE.match(name):
            raise ConfigError(f"name: {name!r} must be 1-128 of letters, digits, '.', '_', '-' (it names a folder)")
        return name
    body = OmegaConf.to_container(cfg, resolve=True)
    body.pop("name", None)
    digest = hashlib.sha1(OmegaConf.to_yaml(OmegaConf.create(body)).encode()).hexdigest()[:8]
    dataset = re.sub(r"[^A-Za-z0-9]+", "_", Path(cfg.data.name.removeprefix("npy:")).stem).strip("_") or "data"
    return f"{cfg.method}-{dataset}-{digest}"


LOCAL_PATH_KEYS = ("eval.inception_weights", "eval.vae", "eval.reference")


def absolute_paths(cfg: DictConfig) -> None:
    """Make the config's local paths (data.name's PATH, the eval files) absolute against this process's directory:
    Ray's workers run in another one, where a relative path names nothing (or something else)."""
    from imm.data import DataSource
    from imm.data.remote import is_remote

    data = DataSource.parse(cfg.data.name)
    if data.is_local_path:
        cfg.data.name = f"{data.kind}:{Path(data.path).expanduser().resolve()}"
    for key in LOCAL_PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if value and not is_remote(value):
            OmegaConf.update(cfg, key, str(Path(value).expanduser().resolve()))


def plan_run(cfg: DictConfig, *, name: str | None = None, tracking_uri: str | None = None,
             experiment: str | None = None, param_keys: tuple[str, ...] = (), title: str | None = None,
             tags: dict[str, str] | None = None, fresh: bool = False) -> RunPlan:
    """Everything about the run that can be decided (and be wrong) before Ray starts. The plan holds a copy of
    `cfg`, or `cfg` itself when it is `fresh`: made for this run alone (a sweep's trial; a copy costs 4 ms)."""
    name = run_name(cfg, name)
    cfg = cfg if fresh else cfg.copy()
    cfg.name = name
    if not in_job():  # in a Ray job every worker's directory is a copy of the job's, where relative paths hold
        absolute_paths(cfg)
    return RunPlan(
        name=name,
        cfg=cfg,
        storage=storage.ray_storage(cfg),
        tracking_uri=tracking.tracking_uri(cfg, tracking_uri),
        experiment=experiment or tracking.DEFAULT_EXPERIMENT,
        param_keys=tuple(param_keys),
        title=title,
        tags=dict(tags or {}),
    )


@dataclass(frozen=True)
class RunResult:
    run_id: str
    name: str
    checkpoint: str | None  # where the final checkpoint lives (a folder or s3:// URI)
    metrics: dict
    resumed: bool  # the MLflow run existed already (a relaunch)
    fit_s: float  # TorchTrainer.fit(), start to end
    startup_s: float | None  # from fit() to the first word from rank 0 (worker group start, imports, restore)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, at `step` (the last one rank 0 reported; None before the first)."""

    def __init__(self, step: int | None):
        super().__init__()
        self.step = step


def open_tracked_run(plan: RunPlan, *, ray_address: str, extra_tags: dict[str, str] | None = None,
                     stream=None, exp_id: str | None = None, new: bool = False,
                     description: tuple[str, str | None] | None = None) -> tuple[str, bool]:
    """(MLflow run id, resumed): the run's MLflow run, created or found again by its name and storage. `exp_id`: the
    experiment's id, when the caller knows it; `new`: no run of this name can exist yet (a sweep's new trial), so
    none is looked for; `description`: (text, image) of `tracking.describe`. A new run takes four MLflow calls:
    its creation with its tags, its params with its description, config.yaml and its data set."""
    mlc = tracking.client(plan.tracking_uri)
    exp_id = exp_id or tracking.experiment_id(mlc, plan.experiment, tracking.artifact_root(plan.tracking_uri))
    tags = {**tracking.run_tags(plan.cfg, plan.name, plan.storage.uri, ray_address), **plan.tags, **(extra_tags or {}),
            provenance.DATA_DIGEST_TAG: provenance.dataset_digest(plan.cfg.data).digest}
    run_id, resumed = tracking.open_run(mlc, exp_id, plan.cfg, tags, stream=stream, param_keys=plan.param_keys,
                                        title=plan.title, new=new, description=description)
    run_record.write(plan.storage, plan.name, run_record.RunRecord(run_id, plan.tracking_uri, plan.experiment))
    provenance.log_dataset(mlc, run_id, plan.cfg.data, tagged=True)
    if plan.cfg.train.init_from:
        from orchestrator.registry.models import source_run_id

        parent_run = source_run_id(plan.cfg.train.init_from, mlc)
        provenance.tag_parent(mlc, run_id, plan.cfg.train.init_from, parent_run)
    if plan.cfg.train.teacher:
        from orchestrator.registry.models import source_run_id

        provenance.tag_teacher(mlc, run_id, plan.cfg.train.teacher, source_run_id(plan.cfg.train.teacher, mlc))
    return run_id, resumed


def launch(plan: RunPlan, *, ray_address: str, kill: KillSwitch | None = None, stream=None,
           run_id: str | None = None, board: Slot | None = None, in_process: bool = False) -> RunResult:
    """Fit the run on the connected Ray cluster; the MLflow run ends FINISHED, FAILED or KILLED.

    `run_id`: an MLflow run opened beforehand (`open_tracked_run`); `board`: a `Slot` on a board the caller
    drains itself (a sweep reads intermediate metrics from it); without one, progress is printed to `stream`.
    `in_process`: train the (one-worker) run in this process instead of a Ray Train worker group
    (`orchestrator.run.in_process`; a sweep's trial task, which Ray retries when it dies).
    """
    import ray

    stream = stream or terminal.out()

    cfg = plan.cfg
    mlc = tracking.client(plan.tracking_uri)
    resumed = False
    if run_id is None:
        text = (f"`{plan.name}`: {cfg.method} on {cfg.data.name}, {cfg.train.steps} steps. Its samples at each "
                "evaluation (rows) and sampling step count (columns):")
        run_id, resumed = open_tracked_run(plan, ray_address=ray_address, stream=stream,
                                           description=(text, tracking.SAMPLES_ARTIFACT))
    print(f"mlflow run: {run_id} ({'resumed' if resumed else 'new'}; experiment {plan.experiment!r}, "
          f"{plan.tracking_uri})", file=stream, flush=True)
    print(f"checkpoints: {plan.storage.run_uri(plan.name)}", file=stream, flush=True)

    own_board = board is None
    board = board or Slot(new_board())
    config = worker_config(cfg, tracking_uri=plan.tracking_uri, run_id=run_id, progress=board, kill=kill)
    stop = threading.Event()
    printer = ProgressPrinter(cfg.train.steps, int(cfg.trainer.max_failures), stream)
    pumping = threading.Thread(target=pump, args=(board, printer, stop), daemon=True) if own_board else None
    if pumping:
        pumping.start()
    status = "FAILED"
    t_fit = time.perf_counter()
    try:
        if in_process:
            from orchestrator.run.in_process import fit_in_process

            metrics, checkpoint = fit_in_process(plan, config)
        else:
            metrics, checkpoint = fit_with_ray_train(plan, config, board)
        fit_s = time.perf_counter() - t_fit
        ckpt_uri = plan.storage.checkpoint_uri(checkpoint) if checkpoint is not None else None
        if checkpoint is not None:
            tracking.log_checkpoint(mlc, run_id, checkpoint, ckpt_uri)
        status = "FINISHED"
    except Superseded:
        status = None  # the run is the later attempt's now: leave its status alone
        raise
    except (KeyboardInterrupt, SystemExit) as e:
        status = "KILLED"
        if isinstance(e, SystemExit) and e.code == 15:  # SIGTERM, which Ray's driver turns into exit(15)
            raise
        # Ctrl-C; Ray Train's own SIGINT handler aborts the run and ends fit() with sys.exit().
        raise Interrupted(printer.last_step) from None
    finally:
        stop.set()
        if pumping:
            pumping.join()
            ray.kill(board.board)
        printer.close()
        if status is not None:
            tracking.close_attempt(mlc, run_id, status)
    startup_s = printer.first_item_at - t_fit if printer.first_item_at else None
    return RunResult(run_id=run_id, name=plan.name, checkpoint=ckpt_uri, metrics=dict(metrics or {}),
                     resumed=resumed, fit_s=fit_s, startup_s=startup_s)


def fit_with_ray_train(plan: RunPlan, config: dict, board) -> tuple[dict[str, float], object]:
    """Fit the run's `TorchTrainer` (workers run `orchestrator.run.worker.train_worker` with `config`): (its last
    metrics, its final checkpoint)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = plan.cfg
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=plan.num_workers, use_gpu=bool(cfg.trainer.use_gpu),
                                     resources_per_worker=plan.resources_per_worker),
        run_config=RunConfig(
            name=plan.name,
            storage_path=plan.storage.path,
            storage_filesystem=plan.storage.filesystem(),
            checkpoint_config=CheckpointConfig(num_to_keep=int(cfg.train.keep_checkpoints)),
            failure_config=FailureConfig(max_failures=int(cfg.trainer.max_failures)),
            callbacks=[failure_callback(board)],
            logging_config=LoggingConfig(log_level="WARNING"),  # progress comes from rank 0, once per report
            # Ray 2.60's structured worker logging prints every report at INFO whatever LoggingConfig says;
            # without it the workers log as plain Python (warnings and errors still reach the driver).
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0"}},
        ),
    )
    result = trainer.fit()
    return dict(result.metrics or {}), result.checkpoint
