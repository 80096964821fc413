"""A one-worker run trained in the calling process: a sweep's trial, in its own Ray task.

Ray Train's fixed cost, a controller, a placement group and a worker group started for each run (12.6 s for a
no-op `fit()` on 2 cores, `benchmarks/speed/sweep_overhead.py`), buys nothing for one worker without a process group.
A trial's Ray task trains here instead, in a Ray worker process that stays warm from one trial to the next (its
torch and imm imports paid once). What Ray Train gave such a run is kept: checkpoints persisted to the same
storage and restored on a relaunch (`orchestrator.run.checkpoints`), and restarts when the process or its node dies,
which are the task's own retries (`max_retries=trainer.max_failures`, `orchestrator.sweep.trials`).
"""

from __future__ import annotations

from typing import Any

from orchestrator.run.checkpoints import CheckpointFolder


class InProcessSession:
    """The session of the only worker of a run (see `orchestrator.run.worker.RayTrainSession`)."""

    rank, world_size = 0, 1

    def __init__(self, folder: CheckpointFolder, use_gpu: bool, cpus: float):
        import torch

        # The CPUs the task reserved: Ray sets OMP_NUM_THREADS when it starts the process, for the task it started
        # it for, and the process stays for trials that may reserve more.
        torch.set_num_threads(max(1, int(cpus)))
        self.folder = folder
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")  # Ray sets CUDA_VISIBLE_DEVICES
        if use_gpu:
            torch.cuda.set_device(self.device)
        self.checkpoint = None  # the newest whole checkpoint, a ray.train.Checkpoint

    def restore(self) -> dict | None:
        from orchestrator.run.worker import restored

        self.checkpoint = self.folder.latest()
        return None if self.checkpoint is None else restored(self.checkpoint)

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        if checkpoint_dir:
            self.checkpoint = self.folder.save(int(metrics["step"]), checkpoint_dir)


def fit_in_process(plan, config: dict[str, Any]) -> tuple[dict[str, float], Any]:
    """Train `plan` (one worker) here with the worker config `config`: (its last metrics, its final checkpoint)."""
    import torch

    from orchestrator.run.worker import run_worker

    folder = CheckpointFolder(plan.storage, plan.name, int(plan.cfg.train.keep_checkpoints))
    session = InProcessSession(folder, use_gpu=bool(plan.cfg.trainer.use_gpu),
                               cpus=float(plan.cfg.trainer.cpus_per_worker))
    try:
        metrics = run_worker(config, session)
    finally:
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # the process stays for the next trial: hand its cached blocks back
    return metrics, session.checkpoint
