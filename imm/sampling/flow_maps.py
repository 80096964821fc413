"""The sampler of average-velocity models u(z, r, t) (MeanFlow, iMF, TVM, flow map matching, shortcut models): exact
jumps z_r = z_t - (t - r) u(z_t, r, t) along the time grid."""

from __future__ import annotations

import torch
from torch import Tensor

from imm.methods.shortcut import trained_step
from imm.sampling.registry import Sampler, register_sampler


@torch.no_grad()
def mean_steps(model, z: Tensor, grid: Tensor, generator: torch.Generator | None = None,
               finest: float = 0.0) -> Tensor:
    """z <- z - (t_i - t_{i+1}) u(z, t_{i+1}, t_i) along the grid; one step is z_0 = z_T - T u(z_T, 0, T).
    `finest` > 0 (shortcut models): steps finer than the finest trained big step take the D = 0 velocity
    (imm.methods.shortcut.trained_step)."""
    u = trained_step(finest) if finest > 0 else (lambda m, x, r, t: m(x, r, t))
    for t, r in zip(grid[:-1], grid[1:], strict=True):
        n = z.shape[0]
        t_, r_ = (torch.full((n,), float(v), dtype=z.dtype, device=z.device) for v in (t, r))
        z = z - float(t - r) * u(model, z, r_, t_)
    return z


register_sampler(Sampler("mean_steps", "average_velocity", "z <- z - (t_i - t_i+1) u(z, t_i+1, t_i)", mean_steps))
