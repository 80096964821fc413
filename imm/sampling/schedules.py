"""Time grids T = t_0 > ... > t_N = eps_t (method notes section 9): uniform in t, EDM's rho-spacing in eta, and
half_eta (a first step to the middle, then eta). `time_grid` adds explicit and tuned grids on top."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from imm.maths.trajectories import Trajectory
from imm.sampling.registry import SCHEDULES, Schedule, register_schedule


def time_grid(
    steps: int,
    traj: Trajectory,
    eps_t: float,
    T: float,
    schedule: str = "uniform",
    times: Sequence[float] | None = None,
    rho: float = 7.0,
) -> Tensor:
    """N + 1 decreasing times from T to eps_t (float64): the registered `schedule`'s, or `times`, an explicit full
    grid [T, ..., eps_t] (e.g. CIFAR-10's 2 steps [0.994, 0.583, 0.006]), which overrides it."""
    if times is not None:
        grid = torch.tensor(list(times), dtype=torch.float64)
        if grid.ndim != 1 or len(grid) < 2 or not bool((grid[1:] < grid[:-1]).all()):
            raise ValueError(f"explicit sampling times must be a strictly decreasing list of >= 2, got {list(times)}")
        return grid
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
    return SCHEDULES[schedule].grid(steps, traj, eps_t, T, rho)


def uniform(steps: int, traj: Trajectory, eps_t: float, T: float, rho: float) -> Tensor:
    return torch.linspace(T, eps_t, steps + 1, dtype=torch.float64)


def eta(steps: int, traj: Trajectory, eps_t: float, T: float, rho: float) -> Tensor:
    lo, hi = (traj.eta(torch.tensor(v, dtype=torch.float64)) for v in (eps_t, T))
    i = torch.arange(steps + 1, dtype=torch.float64) / steps
    grid = traj.eta_inv((hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho)
    grid[0], grid[-1] = T, eps_t
    return grid


def half_eta(steps: int, traj: Trajectory, eps_t: float, T: float, rho: float) -> Tensor:
    mid = (T + eps_t) / 2
    rest = eta(steps - 1, traj, eps_t, mid, rho) if steps > 1 else torch.tensor([eps_t], dtype=torch.float64)
    return torch.cat([torch.tensor([T], dtype=torch.float64), rest])


register_schedule(Schedule("uniform", "linspace in t", uniform))
register_schedule(Schedule("eta", "EDM's rho-spacing in eta = sigma / alpha", eta))
register_schedule(Schedule("half_eta", "a first step to the middle of [eps_t, T], then eta: restart's later steps "
                           "re-noise so little that their small-step biases do not add up (docs/science)", half_eta))
