"""What every Ray Train worker runs: `imm.training.loop.train_loop`, wired to Ray's report/checkpoints and MLflow.

No cluster logic and no model logic lives here: rank, world size and device come from Ray's context,
the checkpoint to resume from from `ray.train.get_checkpoint()`, and everything about training from imm.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

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


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker."""
    import ray.train
    import ray.train.torch

    from imm.config import config_from_dict
    from imm.training.loop import load_checkpoint, train_loop
    from orchestrator.tracking import RankZeroLogger, add_nodes

    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    kill = KillSwitch(**config["kill"]) if config.get("kill") else None
    progress = config.get("progress")

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_checkpoint(d)
    logger = RankZeroLogger(config["tracking_uri"], config["run_id"], final_step=int(cfg.train.steps)) if rank == 0 else None
    nodes = _gather_nodes(world_size)
    if logger is not None:
        add_nodes(logger.client, config["run_id"], nodes)
    if rank == 0 and progress is not None:  # the driver tells a restart by a second such event
        event = "resumed" if resume else "started"
        _push(progress, {"event": event, "step": int(resume["step"]) if resume else 0, "nodes": nodes})

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        step = int(metrics["step"])
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{step:07d}" if ckpt else None)
        if logger is not None:
            logger.record(metrics)
            if ckpt is not None:
                # report() returns once this rank uploaded the checkpoint, but a relaunch restores only what
                # the controller registered, after polling every rank; a rank dying in between would leave
                # MLflow ahead of the restore point. Wait for the registration, then commit.
                ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
                logger.commit()
            if progress is not None:
                _push(progress, {**metrics, "time": time.time()})
        if kill is not None:
            kill.maybe_fire(step, rank)

    try:
        train_loop(
            cfg,
            rank=rank,
            world_size=world_size,
            device=ray.train.torch.get_device(),
            report=report,
            resume=resume,
            on_eval=logger.on_eval if logger else None,
        )
    finally:
        if logger is not None:
            logger.close()  # drops what was held: on an error those steps are computed again after a restart


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


def _push(board, item: dict) -> None:
    """Hand a progress item to the driver's board and wait for it (so none is lost at the end); best effort."""
    import ray

    try:
        ray.get(board.push.remote(item), timeout=10)
    except Exception:  # the driver's progress display must never fail a training run
        pass
