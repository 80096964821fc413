"""Samplers of a velocity field v(x, t) (flow matching): Euler and Heun on the time grid."""

from __future__ import annotations

import torch
from torch import Tensor

from imm.sampling.maps import batch_times
from imm.sampling.registry import Sampler, register_sampler


@torch.no_grad()
def euler(model, x: Tensor, grid: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flow matching, Euler: x <- x + (t_{i+1} - t_i) v(x, t_i)."""
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        x = x + float(t_next - t) * model(x, batch_times(t, x))
    return x


@torch.no_grad()
def heun(model, x: Tensor, grid: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flow matching, Heun's second-order method (2 velocity evaluations per step)."""
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        h = float(t_next - t)
        v = model(x, batch_times(t, x))
        x_euler = x + h * v
        x = x + 0.5 * h * (v + model(x_euler, batch_times(t_next, x)))
    return x


register_sampler(Sampler("euler", "velocity", "x <- x + (t_i+1 - t_i) v(x, t_i)", euler))
register_sampler(Sampler("heun", "velocity", "Heun's second-order method, 2 velocity evaluations per step", heun))
