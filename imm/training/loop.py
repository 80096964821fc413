"""One training loop, the same on a laptop CPU and inside each Ray Train worker.

`train_loop` knows nothing about the cluster: rank, world size and a `report(metrics, checkpoint_dir)`
callback are parameters. Every rank calls `report` at the same steps (Ray's report is a barrier);
only rank 0 evaluates and writes checkpoints. `python -m imm.train CONFIG [key=value ...]` runs it
alone and keeps `checkpoint.pt` under `train.out_dir`, resuming from it when it is there.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from imm.checks import ConfigError
from imm.data import load_data, random_xflip, shard
from imm.methods import build_loss, build_model
from imm.methods.registry import pinned
from imm.metrics.evaluator import QUALITY_PREFIXES, Evaluator
from imm.training import accelerate
from imm.training.checkpoint import CHECKPOINT_FILE
from imm.training.ema import ema_model
from imm.training.start import start_from
from imm.training.teacher import Teacher, check_teacher

Report = Callable[[dict[str, float], "str | None"], None]


def accumulate_gradients(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor | None, parts: int,
                         autocast=None) -> torch.Tensor:
    """Backpropagate the loss of (x, y) as `parts` equal micro-batches; return the whole batch's loss, detached.

    Each micro-batch's loss is divided by `parts`, so for losses that are means over equal groups the summed
    gradients are the whole batch's. Under DDP only the last backward all-reduces (`no_sync` on the others).
    """
    total = torch.zeros((), device=x.device)
    xs, ys = x.chunk(parts), (y.chunk(parts) if y is not None else (None,) * parts)
    for i, (xb, yb) in enumerate(zip(xs, ys, strict=True)):
        sync = i == parts - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast or contextlib.nullcontext():
                loss = loss_fn(model, xb, yb) / parts
            loss.backward()
        total += loss.detach()
    return total


def finite_gradients(model: torch.nn.Module, clip: float) -> bool:
    """Whether every gradient is finite (one total norm, one host sync); clips to `clip` (> 0) when they are.
    Under DDP the gradients are all-reduced before this, so a non-finite value on any rank is on every rank and
    every rank decides alike, without another collective."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if not bool(torch.isfinite(norm)):
        return False
    if clip > 0:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), clip, norm)
    return True


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for one rank's training step, unrelated to its neighbours' (a hash, not seed + rank + step)."""
    digest = hashlib.blake2b(f"{seed}/{rank}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def fetched_per_worker(reader, world_size: int, device) -> dict[str, float]:
    """MB of latent shards each worker has fetched from S3 so far (`data/fetched_mb/rank_R`): that every worker
    fetches only its own shards, once per pass, is visible in the run. Collective: every rank calls it."""
    mine = torch.tensor([reader.fetched_bytes / 2**20], dtype=torch.float64, device=device)
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        every = [torch.zeros_like(mine) for _ in range(world_size)]
        dist.all_gather(every, mine)
    else:
        every = [mine]
    return {f"data/fetched_mb/rank_{r}": float(v) for r, v in enumerate(every)}


class Batches:
    """This worker's share of the training set and each step's batch from it: rows held in memory, or a latent set's
    shards read a batch at a time; mirrored (data.xflip) and with labels dropped to the null label for guidance."""

    def __init__(self, cfg: DictConfig, dataset, rank: int, world_size: int, device: torch.device,
                 layout: torch.memory_format, num_classes: int):
        self.cfg, self.device, self.layout, self.num_classes = cfg, device, layout, num_classes
        if dataset.train is None:  # latents: this worker's shards, read a batch at a time
            self.reader, self.data, self.labels = dataset.reader(rank, world_size), None, None
        else:
            self.reader, self.data = None, shard(dataset.train, rank, world_size).to(device)
            if self.data.ndim == 4:
                self.data = self.data.contiguous(memory_format=layout)
            self.labels = shard(dataset.train_labels, rank, world_size).to(device) if num_classes else None

    def __call__(self, step: int, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.reader is not None:
            x, y = self.reader.batch(n, step, self.device)
            x, y = x.contiguous(memory_format=self.layout) if x.ndim == 4 else x, y if self.num_classes else None
        else:
            idx = torch.randint(len(self.data), (n,), device=self.device)
            x, y = self.data[idx], self.labels[idx] if self.labels is not None else None
        if self.cfg.data.xflip and x.ndim == 4:
            x = random_xflip(x)
        if y is not None:  # classifier-free guidance trains the null label too
            y = torch.where(torch.rand(n, device=self.device) < self.cfg.train.label_dropout, self.num_classes, y)
        return x, y


def train_loop(
    cfg: DictConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device | None = None,
    report: Report | None = None,
    resume: dict[str, Any] | None = None,
    on_eval: Callable[[int, dict[int, torch.Tensor], dict[str, str], torch.Tensor | None], None] | None = None,
    init: torch.nn.Module | None = None,
    teacher=None,
) -> dict[str, float]:
    """Train `cfg` from scratch or from the checkpoint dict `resume`; return the last reported metrics. `init`: the
    model whose network this one starts from (train.init_from's, unless resuming; imm.training.start), also the EMA's;
    the optimizer starts fresh.
    `teacher`: train.teacher's TrainedModel, for the methods that distill (imm.training.teacher).

    report(metrics, checkpoint_dir) is called on every rank at each logging, evaluation or checkpoint step
    (checkpoint_dir is None except on rank 0 at checkpoint steps; the folder is deleted once it returns).
    on_eval(step, {steps_K: samples}, tags, reference) is called on rank 0 after each evaluation (every rank evaluates
    its share of the samples); tags say which feature extractor the Frechet metrics used; reference is held-out
    data to draw behind 2D samples (None for images).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = accelerate.resolve_precision(cfg, device)
    accelerate.configure_backends(cfg, device)
    layout = accelerate.memory_format(cfg, device)
    tc = cfg.train
    start = int(resume["step"]) if resume else 0
    torch.manual_seed(tc.seed)  # the initial weights (rank 0's reach every rank under DDP)

    dataset = load_data(cfg.data)
    sigma_d = float(cfg.data.sigma_d or dataset.sigma_d)
    num_classes = dataset.num_classes if cfg.model.class_conditional else 0
    if cfg.model.class_conditional and not num_classes:
        raise ConfigError(f"model.class_conditional: data.name={cfg.data.name!r} has no class labels")
    batches = Batches(cfg, dataset, rank, world_size, device, layout, num_classes)
    data_shape = dataset.shape
    evaluator = Evaluator(cfg, dataset, device, rank, world_size)
    reference = dataset.heldout[:2000] if len(data_shape) == 1 else None  # drawn faintly behind 2D samples
    model = build_model(cfg, data_shape, sigma_d, num_classes).to(device, memory_format=layout)
    ema = ema_model(model, tc.ema_decay, tc.ema_rampup)
    opt = accelerate.optimizer(cfg, model.parameters(), device)
    warmup = max(tc.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup))
    # Steps whose gradient was not finite: skipped (no optimizer, scheduler or EMA update, loss not averaged),
    # counted in all and in a row; both survive a resume, and max_skipped_steps in a row stop the run.
    skipped, in_a_row = (int(resume.get("skipped_steps", 0)), int(resume.get("skipped_in_a_row", 0))) if resume else (0, 0)
    if resume:
        model.load_state_dict(resume["model"])
        ema.module.load_state_dict(resume["ema"])
        ema.n_averaged.fill_(int(resume["ema_updates"]))
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
    elif init is not None:
        start_from(init, model, ema.module, what=f"train.init_from={tc.init_from}")

    ddp = model
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if tc.compile:
        ddp = torch.compile(ddp)
    autocast = accelerate.autocast(cfg, device)
    if teacher is not None:
        check_teacher(cfg, teacher, data_shape, sigma_d, num_classes)
        teacher = Teacher(teacher, device)
    loss_fn = build_loss(cfg, teacher=teacher)
    # A loss with state of its own (TVM's EMA target) follows each optimizer step and is kept in the checkpoint.
    after_step = getattr(loss_fn, "after_step", lambda model: None)
    # A loss with `diagnostics` measures itself (extra gradients, say) on the steps that log, and only on those.
    diagnoses = hasattr(loss_fn, "diagnostics")
    if resume and "loss" in resume:
        loss_fn.load_state_dict(resume["loss"])
    per_worker = tc.batch_size // world_size
    report = report or (lambda metrics, checkpoint_dir: None)

    last: dict[str, float] = {}
    # Seconds spent in this loop, summed over resumed attempts: what the run cost, without cluster start-up.
    train_s0, t_start = float(resume.get("train_s", 0.0)) if resume else 0.0, time.perf_counter()
    loss_sum, loss_n, t_window, window_start = torch.zeros((), device=device), 0, time.perf_counter(), start
    for step in range(start + 1, tc.steps + 1):
        # Each step's randomness comes from (seed, rank, step) alone: a run resumed from a checkpoint draws what an
        # uninterrupted one draws, so an interruption cannot change a trial's result; every rank draws its own.
        torch.manual_seed(step_seed(tc.seed, rank, step))
        x, y = batches(step, per_worker)
        opt.zero_grad(set_to_none=True)
        if diagnoses:
            loss_fn.diagnose = step % tc.log_every == 0 or step == tc.steps
        loss = accumulate_gradients(ddp, loss_fn, x, y, tc.accumulate, autocast)
        if finite_gradients(model, tc.grad_clip):
            opt.step()
            sched.step()
            ema.update_parameters(model)
            after_step(model)
            loss_sum += loss
            loss_n += 1
            in_a_row = 0
        else:
            skipped, in_a_row = skipped + 1, in_a_row + 1
            if in_a_row >= tc.max_skipped_steps:
                first, value = step - in_a_row + 1, float(loss)
                diverged = f"train/loss became {value} by step {first}: " if not math.isfinite(value) else ""
                raise FloatingPointError(
                    f"{diverged}the gradient was not finite {in_a_row} steps in a row (steps {first}-{step}, "
                    f"train.max_skipped_steps={tc.max_skipped_steps}); lower train.lr or check the data")

        is_last = step == tc.steps
        do_log, do_eval = step % tc.log_every == 0 or is_last, step % cfg.eval.every == 0 or is_last
        do_ckpt = step % tc.checkpoint_every == 0 or is_last
        if not (do_log or do_eval or do_ckpt):
            continue
        mean_loss = float(loss_sum / loss_n) if loss_n else float("nan")  # nan: every step of the window skipped
        if loss_n and not math.isfinite(mean_loss):
            raise FloatingPointError(f"train/loss became {mean_loss} by step {step}; lower train.lr or check the data")
        elapsed = time.perf_counter() - t_window
        metrics = {
            "train/loss": mean_loss,
            "train/lr": opt.param_groups[0]["lr"],
            "throughput/samples_per_s": (step - window_start) * tc.batch_size / elapsed,
            "train/skipped_steps": skipped,
        }
        if do_log and diagnoses:
            metrics.update(loss_fn.diagnostics)
        if batches.reader is not None and batches.reader.remote:
            metrics.update(fetched_per_worker(batches.reader, world_size, device))
        if do_eval:
            evaluation = evaluator(ema.module)
            metrics.update(evaluation.metrics)
            if on_eval and rank == 0:
                on_eval(step, evaluation.samples, evaluator.tags, reference)
        metrics["time/train_s"] = train_s0 + time.perf_counter() - t_start
        metrics["step"] = step
        ckpt_dir = None
        with tempfile.TemporaryDirectory(prefix="imm-ckpt-") as tmp:
            if do_ckpt and rank == 0:
                state = {
                    "step": step, "model": model.state_dict(), "ema": ema.module.state_dict(),
                    "ema_updates": int(ema.n_averaged), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "train_s": metrics["time/train_s"], "skipped_steps": skipped, "skipped_in_a_row": in_a_row,
                    "config": OmegaConf.to_container(pinned(cfg), resolve=True), "sigma_d": sigma_d,
                    "data_shape": list(data_shape), "num_classes": num_classes,
                    **({"loss": loss_fn.state_dict()} if hasattr(loss_fn, "state_dict") else {}),
                }
                torch.save(state, os.path.join(tmp, CHECKPOINT_FILE))
                ckpt_dir = tmp
            report(metrics, ckpt_dir)
        last = metrics
        loss_sum.zero_()
        loss_n, t_window, window_start = 0, time.perf_counter(), step
    return last


def progress_line(metrics: dict[str, float], total_steps: int, eta_seconds: float) -> str:
    """`step S/N  loss L  R samples/s  ETA hh:mm:ss  energy/steps_K=...`: one line per report."""
    eta = time.strftime("%H:%M:%S", time.gmtime(eta_seconds)) if math.isfinite(eta_seconds) else "--:--:--"
    quality = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(QUALITY_PREFIXES))
    line = (f"step {int(metrics['step'])}/{total_steps}  loss {metrics['train/loss']:.4g}  "
            f"{metrics['throughput/samples_per_s']:,.0f} samples/s  ETA {eta}  {quality}")
    return line.rstrip()
