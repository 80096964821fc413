"""Samplers as plain functions over a model and a decreasing time grid T = t_0 > ... > t_N = eps_t
(method notes section 9). IMM: pushforward, restart. Flow matching: euler, heun."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from imm.maths.trajectories import Trajectory

SCHEDULES = ("uniform", "eta", "half_eta")


def time_grid(
    steps: int,
    traj: Trajectory,
    eps_t: float,
    T: float,
    schedule: str = "uniform",
    times: Sequence[float] | None = None,
    rho: float = 7.0,
) -> Tensor:
    """N + 1 decreasing times from T to eps_t (float64).

    uniform: linspace in t. eta: EDM's rho-spacing in eta. half_eta: a first step to the middle of [eps_t, T], then
    EDM's rho-spacing in eta from there: restart's later steps re-noise so little that their small-step biases do not
    add up (docs/science). `times`: an explicit full grid [T, ..., eps_t] (e.g. CIFAR-10's 2 steps
    [0.994, 0.583, 0.006]), which overrides all three.
    """
    if times is not None:
        grid = torch.tensor(list(times), dtype=torch.float64)
        if grid.ndim != 1 or len(grid) < 2 or not bool((grid[1:] < grid[:-1]).all()):
            raise ValueError(f"explicit sampling times must be a strictly decreasing list of >= 2, got {list(times)}")
        return grid
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if schedule == "uniform":
        return torch.linspace(T, eps_t, steps + 1, dtype=torch.float64)
    if schedule == "half_eta":
        mid = (T + eps_t) / 2
        rest = time_grid(steps - 1, traj, eps_t, mid, "eta", rho=rho) if steps > 1 else \
            torch.tensor([eps_t], dtype=torch.float64)
        return torch.cat([torch.tensor([T], dtype=torch.float64), rest])
    if schedule == "eta":
        lo, hi = (traj.eta(torch.tensor(v, dtype=torch.float64)) for v in (eps_t, T))
        i = torch.arange(steps + 1, dtype=torch.float64) / steps
        eta = (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        grid = traj.eta_inv(eta)
        grid[0], grid[-1] = T, eps_t
        return grid
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")


def _full(v: Tensor, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(v), dtype=x.dtype, device=x.device)


@torch.no_grad()
def pushforward(model, x: Tensor, grid: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x <- f_{t_{i+1}, t_i}(x): deterministic after the initial noise. The state and the grid stay in float64 between
    network calls, as in the official sampler (the network itself runs in its own dtype)."""
    z = x.double()
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        z = model(z, _full(s, z), _full(t, z))
    return z.to(x.dtype)


@torch.no_grad()
def restart(model, x: Tensor, grid: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x0 <- f_{eps_t, t_i}(x), then re-noise x0 to t_{i+1} with fresh noise; the last step returns x0. The state,
    the grid and the fresh noise in float64, as in the official sampler."""
    eps_t, traj, sigma_d = grid[-1], model.traj, model.sigma_d
    z = x.double()
    for i, t in enumerate(grid[:-1]):
        x0 = model(z, _full(eps_t, z), _full(t, z))
        if i == len(grid) - 2:
            return x0.to(x.dtype)
        t_next = grid[i + 1].double()
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=torch.float64) * float(sigma_d)
        z = traj.alpha(t_next).item() * x0 + traj.sigma(t_next).item() * noise
    return z.to(x.dtype)


@torch.no_grad()
def euler(model, x: Tensor, grid: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flow matching, Euler: x <- x + (t_{i+1} - t_i) v(x, t_i)."""
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        x = x + float(t_next - t) * model(x, _full(t, x))
    return x


@torch.no_grad()
def heun(model, x: Tensor, grid: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flow matching, Heun's second-order method (2 velocity evaluations per step)."""
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        h = float(t_next - t)
        v = model(x, _full(t, x))
        x_euler = x + h * v
        x = x + 0.5 * h * (v + model(x_euler, _full(t_next, x)))
    return x


SAMPLERS = {"pushforward": pushforward, "restart": restart, "euler": euler, "heun": heun}


def initial_noise(
    n: int, shape: Sequence[int], sigma_d: Tensor, traj: Trajectory, T: float,
    generator: torch.Generator | None = None, device=None,
) -> Tensor:
    """x_T = sigma_d eps, eps ~ N(0, I): the prior the trajectory ends in, as the official sampler draws it (not the
    marginal at T, whose std is sigma_d sqrt(alpha_T^2 + sigma_T^2): 0.6% smaller on ot_fm at T = 0.994)."""
    return torch.randn((n, *shape), generator=generator, device=device) * float(sigma_d)
