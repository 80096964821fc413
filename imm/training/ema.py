"""The EMA of the weights that every evaluation samples, with EDM's ramp-up (Karras et al. 2022, training/
training_loop.py's ema_rampup_ratio) as an option.

A fixed decay beta has a half-life of ln(1/2) / ln(beta) steps: 0.9999 is ~6900 steps. Early in a run such an EMA
still holds mostly the first steps' weights (after n updates the first weights keep beta^n of it), so an early
evaluation, the one an ASHA rung prunes on, judges a stale model. With the ramp-up the half-life after n updates is
min(half-life, ratio * n): the EMA always averages the recent `ratio` of the run, and from n = half-life / ratio on
it is the configured EMA exactly.

Measured on digits (benchmarks/studies/ema_ranking.py, docs/science/README.md): the ramp-up makes an early evaluation measure
the model rather than the initialisation, but its short average ranks trials worse against their final ranking than
the fixed EMA does; no shipped config uses it.
"""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def half_life(decay: float) -> float:
    """Steps after which an EMA of this decay weighs a past step by one half."""
    return math.log(0.5) / math.log(decay)


def ramped_decay(decay: float, rampup: float, n: torch.Tensor) -> torch.Tensor:
    """The decay of update n + 1 (n updates done): 0.5 ** (1 / min(half-life, rampup * n)); `decay` once ramped."""
    h = torch.clamp(rampup * n.to(torch.float64), min=1e-8, max=half_life(decay))
    return torch.pow(0.5, 1 / h)


def ramped_ema_fn(decay: float, rampup: float):
    """AveragedModel's multi_avg_fn for an EMA whose half-life ramps up with the number of updates (the decay a
    tensor on the weights' device: no host sync per step)."""

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        torch._foreach_lerp_(ema, current, (1 - ramped_decay(decay, rampup, n)).to(ema[0].dtype))

    return update


def ema_model(model: torch.nn.Module, decay: float, rampup: float = 0.0) -> AveragedModel:
    """The weights' EMA (buffers too): `decay` throughout, or ramped up when rampup > 0."""
    fn = ramped_ema_fn(decay, rampup) if rampup > 0 else get_ema_multi_avg_fn(decay)
    return AveragedModel(model, multi_avg_fn=fn, use_buffers=True)
