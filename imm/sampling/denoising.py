"""Samplers of a noise-prediction model (DDPM): DDIM along a respaced integer timestep grid, and ancestral sampling
(DDIM with eta = 1). x starts as N(0, I) noise; they return data units."""

from __future__ import annotations

import torch
from torch import Tensor

from imm.sampling.registry import Sampler, register_sampler


def ddim_sigma(a_n: Tensor, a_m: Tensor, eta: float) -> Tensor:
    """The noise DDIM adds going from abar_n to abar_m; at eta = 1 the DDPM posterior's std."""
    return eta * ((1 - a_m) / (1 - a_n)).sqrt() * (1 - a_n / a_m).sqrt()


@torch.no_grad()
def ddim(model, x: Tensor, grid: Tensor, generator: torch.Generator | None = None,
         eta: float = 0.0) -> Tensor:
    """DDIM along the integer grid from `timestep_grid`; x starts as N(0, I) noise; returns data units."""
    abars = model.alpha_bars.double()
    for n, m in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        a_n = abars[n]
        a_m = abars[m] if m >= 0 else torch.ones((), dtype=torch.float64, device=abars.device)
        eps = model(x, torch.full((x.shape[0],), n, device=x.device)).double()
        x0 = (x.double() - (1 - a_n).sqrt() * eps) / a_n.sqrt()
        if model.clip_x0 > 0:  # clip in data units, then take the noise that x_n and the clipped x0 imply
            bound = model.clip_x0 / float(model.sigma_d)
            x0 = x0.clamp(-bound, bound)
            eps = (x.double() - a_n.sqrt() * x0) / (1 - a_n).sqrt()
        sigma = ddim_sigma(a_n, a_m, eta)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
        x = (a_m.sqrt() * x0 + (1 - a_m - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise).to(x.dtype)
    return x * model.sigma_d


@torch.no_grad()
def ancestral(model, x: Tensor, grid: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Ancestral sampling: DDIM with eta = 1, i.e. the DDPM posterior at each (respaced) step."""
    return ddim(model, x, grid, generator, eta=1.0)


register_sampler(Sampler("ancestral", "noise_prediction", "the DDPM posterior at each respaced step", ancestral))
register_sampler(Sampler("ddim", "noise_prediction", "DDIM; sample.eta: 0 deterministic, 1 DDPM-like", ddim))
