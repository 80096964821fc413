"""Samplers of one-step maps f_{s,t}(x_t) (IMM and the consistency model; method notes section 9): pushforward
and restart, on a decreasing time grid T = t_0 > ... > t_N = eps_t."""

from __future__ import annotations

import torch
from torch import Tensor

from imm.sampling.registry import Sampler, register_sampler


def batch_times(v: Tensor, x: Tensor) -> Tensor:
    """The time v for every row of the batch x, in its dtype."""
    return torch.full((x.shape[0],), float(v), dtype=x.dtype, device=x.device)


@torch.no_grad()
def pushforward(model, x: Tensor, grid: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x <- f_{t_{i+1}, t_i}(x): deterministic after the initial noise. The state and the grid stay in float64 between
    network calls, as in the official sampler (the network itself runs in its own dtype)."""
    z = x.double()
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        z = model(z, batch_times(s, z), batch_times(t, z))
    return z.to(x.dtype)


@torch.no_grad()
def restart(model, x: Tensor, grid: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x0 <- f_{eps_t, t_i}(x), then re-noise x0 to t_{i+1} with fresh noise; the last step returns x0. The state,
    the grid and the fresh noise in float64, as in the official sampler."""
    eps_t, traj, sigma_d = grid[-1], model.traj, model.sigma_d
    z = x.double()
    for i, t in enumerate(grid[:-1]):
        x0 = model(z, batch_times(eps_t, z), batch_times(t, z))
        if i == len(grid) - 2:
            return x0.to(x.dtype)
        t_next = grid[i + 1].double()
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=torch.float64) * float(sigma_d)
        z = traj.alpha(t_next).item() * x0 + traj.sigma(t_next).item() * noise
    return z.to(x.dtype)


register_sampler(Sampler("pushforward", "one_step_map", "x <- f_{t_i+1, t_i}(x), deterministic after the noise",
                         pushforward))
register_sampler(Sampler("restart", "one_step_map", "x0 <- f_{eps_t, t_i}(x), re-noised to t_i+1", restart))
