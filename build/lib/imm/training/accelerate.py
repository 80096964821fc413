"""The GPU switches of a training run, each on by default where it is safe and a no-op on CPU.

- train.precision=auto: bf16 autocast on CUDA (the losses and IMM's kernel sums stay in fp32), fp32 on CPU.
- train.tf32: TF32 matmuls and convolutions on CUDA (float32 matmul precision "high").
- train.channels_last: the U-Nets' weights and batches in channels-last layout on CUDA (tensor-core convolutions).
- train.fused_optimizer: Adam/AdamW's fused CUDA kernel (RAdam: the multi-tensor foreach path).
- train.compile: torch.compile of the network (opt-in: the first steps pay the compilation). The loss is not
  compiled: IMM's target pass rewinds the RNG to replay dropout masks, which tests/test_model.py shows holds for a
  compiled network.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from imm.networks.registry import ARCHITECTURES

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
PRECISIONS = ("auto", "fp32", "bf16")


def precision(cfg: DictConfig, device: torch.device) -> str:
    """The forward passes' precision: train.precision, with `auto` = bf16 on CUDA and fp32 elsewhere."""
    p = cfg.train.precision
    return ("bf16" if device.type == "cuda" else "fp32") if p == "auto" else p


def planned_precision(cfg: DictConfig) -> str:
    """The precision a run will train in, known before any worker starts: `auto` is bf16 where the trainer asks for
    GPUs (trainer.use_gpu). A run started by hand on a GPU resolves `auto` on its device (resolve_precision)."""
    p = cfg.train.precision
    return ("bf16" if cfg.trainer.use_gpu else "fp32") if p == "auto" else p


def resolve_precision(cfg: DictConfig, device: torch.device) -> DictConfig:
    """A copy of cfg with train.precision=auto replaced by what it means on `device`, so that what depends on it
    (IMM's low-precision floor imm.delta) and the checkpoint's config say what the run really did."""
    if cfg.train.precision != "auto":
        return cfg
    out = cfg.copy()
    out.train.precision = precision(cfg, device)
    return out


def autocast(cfg: DictConfig, device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision(cfg, device) == "bf16")


def configure_backends(cfg: DictConfig, device: torch.device) -> None:
    if device.type == "cuda" and cfg.train.tf32:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions once


def memory_format(cfg: DictConfig, device: torch.device) -> torch.memory_format:
    """channels_last for the convolutional networks on CUDA with train.channels_last, else the default layout."""
    fast = device.type == "cuda" and cfg.train.channels_last and ARCHITECTURES[cfg.model.arch].channels_last
    return torch.channels_last if fast else torch.contiguous_format


def optimizer(cfg: DictConfig, params, device: torch.device) -> torch.optim.Optimizer:
    kind, kw = OPTIMIZERS[cfg.train.optimizer], {}
    if device.type == "cuda" and cfg.train.fused_optimizer:
        kw = {"foreach": True} if kind is torch.optim.RAdam else {"fused": True}
    return kind(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, **kw)
