"""What every worker runs: `imm.training.loop.train_loop`, wired to its session's report/checkpoints and MLflow.

No cluster logic and no model logic lives here: rank, world size, device, the checkpoint to resume from and where
checkpoints go come from the session (Ray Train's context, or `orchestrator.run.in_process` for a run in one process),
and everything about training from imm.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.run.board import Pusher

KILL_ENV = "IMM_ORCH_KILL_WORKER"


@dataclass(frozen=True)
class KillSwitch:
    """A fault drill: SIGKILL the worker of `rank` right after its report at the first step >= `step`.

    It fires once: the marker file it creates first keeps the restarted worker alive. Set it from the
    environment as IMM_ORCH_KILL_WORKER="step=30,rank=1,marker=/tmp/imm-kill" (read on the driver).
    """

    step: int
    rank: int
    marker: str

    @classmethod
    def from_env(cls) -> KillSwitch | None:
        raw = os.environ.get(KILL_ENV)
        if not raw:
            return None
        try:
            kv = dict(item.split("=", 1) for item in raw.split(","))
            return cls(step=int(kv["step"]), rank=int(kv.get("rank", 0)), marker=kv["marker"])
        except (KeyError, ValueError):
            raise ValueError(f"{KILL_ENV}: expected 'step=N,rank=R,marker=PATH', got {raw!r}") from None

    def maybe_fire(self, step: int, rank: int) -> None:
        if rank != self.rank or step < self.step:
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"killed rank {rank} pid {os.getpid()} after step {step}\n".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def worker_config(cfg, *, tracking_uri: str, run_id: str, progress=None, kill: KillSwitch | None = None) -> dict:
    """The `train_loop_config` handed to every worker (plain data and an actor handle: it is pickled)."""
    from omegaconf import OmegaConf

    return {
        "cfg": OmegaConf.to_container(cfg, resolve=True),
        "tracking_uri": tracking_uri,
        "run_id": run_id,
        "progress": progress,
        "kill": asdict(kill) if kill else None,
    }


PENDING_KEY = "mlflow_pending"  # in a restored state: the metrics its checkpoint covers (`RankZeroLogger.stash`)


def restored(checkpoint) -> dict:
    """The state of a Ray checkpoint, with the metrics it covers under PENDING_KEY (None if it holds none)."""
    from imm.training.checkpoint import load_checkpoint
    from orchestrator.track.rank_zero import read_pending

    with checkpoint.as_directory() as d:
        return {**load_checkpoint(d), PENDING_KEY: read_pending(d)}


class RayTrainSession:
    """What a worker of a Ray Train run is told and tells: its rank and device from Ray's context, the checkpoint
    to resume from from `ray.train.get_checkpoint()`, its reports and checkpoints through `ray.train.report`."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def restore(self) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return None if checkpoint is None else restored(checkpoint)

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        """Report on every rank (a barrier); with a checkpoint, return on rank 0 once a relaunch would restore it."""
        import ray.train

        step = int(metrics["step"])
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{step:07d}" if ckpt else None)
        if ckpt is not None and self.rank == 0:
            # report() returns once this rank uploaded the checkpoint, but a relaunch restores only what the
            # controller registered, after polling every rank; a rank dying in between would leave MLflow ahead
            # of the restore point.
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker."""
    run_worker(config, RayTrainSession())


def run_worker(config: dict[str, Any], session) -> dict[str, float]:
    """Train one worker's share of the run, in a Ray Train worker or alone in one process (`session` says which,
    `RayTrainSession` or `orchestrator.run.in_process.InProcessSession`); rank 0 logs to MLflow, commits the metrics
    a checkpoint covers once it is safe, and pushes each report to the progress board. The last metrics."""
    from imm.config import config_from_dict
    from imm.training.loop import train_loop
    from orchestrator.track import provenance
    from orchestrator.track.rank_zero import RankZeroLogger
    from orchestrator.track.tracking import add_nodes

    cfg = config_from_dict(config["cfg"])
    rank, world_size = session.rank, session.world_size
    kill = KillSwitch(**config["kill"]) if config.get("kill") else None
    progress = Pusher(config["progress"]) if rank == 0 and config.get("progress") is not None else None

    resume = session.restore()
    init = None
    if resume is None and cfg.train.init_from:
        from orchestrator.registry.models import initial_model

        init = initial_model(cfg.train.init_from, config["tracking_uri"])
    teacher = None
    if cfg.train.teacher:  # once per worker (a restarted worker loads it again)
        from orchestrator.registry.models import load_model

        teacher = load_model(cfg.train.teacher, tracking_uri=config["tracking_uri"], device="cpu")
    logger = RankZeroLogger(config["tracking_uri"], config["run_id"], final_step=int(cfg.train.steps)) if rank == 0 else None
    if logger is not None and resume and resume.get(PENDING_KEY):
        logger.recover(resume[PENDING_KEY])  # what the attempt that saved the checkpoint did not live to send
    nodes = _gather_nodes(world_size)
    if logger is not None:
        add_nodes(logger.client, config["run_id"], nodes)
        provenance.tag_versions(logger.client, config["run_id"])
    # one monitor per node: its first rank's
    monitor = provenance.system_metrics(config["tracking_uri"], config["run_id"], nodes[rank],
                                        float(cfg.trainer.system_metrics_s)) if nodes.index(nodes[rank]) == rank else None
    if progress is not None:  # the driver tells a restart by a second such event
        event = "resumed" if resume else "started"
        progress.push({"event": event, "step": int(resume["step"]) if resume else 0, "nodes": nodes})

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        if logger is not None:
            if checkpoint_dir:
                logger.check_writer()  # a cut-off attempt's checkpoint would land beside the new attempt's
            logger.record(metrics)
            if checkpoint_dir:
                logger.stash(checkpoint_dir)  # the metrics it covers go with it
        session.report(metrics, checkpoint_dir)  # returns once a relaunch would restore the checkpoint
        if logger is not None:
            if checkpoint_dir:
                logger.commit()
            if progress is not None:
                progress.push({**metrics, "time": time.time()})
        if kill is not None:
            if progress is not None:
                progress.flush()  # the drill kills right after a report the driver has seen
            kill.maybe_fire(int(metrics["step"]), rank)

    try:
        return train_loop(
            cfg,
            rank=rank,
            world_size=world_size,
            device=session.device,
            report=report,
            resume=resume,
            on_eval=logger.on_eval if logger else None,
            init=init,
            teacher=teacher,
        )
    finally:
        if monitor is not None:
            monitor.finish()
        if logger is not None:
            logger.close()  # drops what was held: on an error those steps are computed again after a restart
        if progress is not None:
            progress.flush()


def _gather_nodes(world_size: int) -> list[str]:
    """Every rank's node as IP/node-id prefix (the dashboard's node ids), gathered over the process group."""
    import ray
    import torch.distributed as dist

    me = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    if world_size == 1 or not dist.is_initialized():
        return [me]
    nodes: list[str] = [""] * world_size
    dist.all_gather_object(nodes, me)
    return nodes
