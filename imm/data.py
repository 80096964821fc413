"""Data sets: toy 2D point clouds generated from a fixed seed, and `npy:PATH` arrays of shape (N, D).

Nothing is downloaded: every set is either made here or read from a path the user gives.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    """Eight well-separated modes on a circle of radius 2, std 0.1 each."""
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.float() * (2 * math.pi / 8)
    centers = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centers + 0.1 * torch.randn(n, 2, generator=g)


def checkerboard(n: int, g: torch.Generator) -> Tensor:
    """Uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2."""
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - 2 * torch.randint(0, 2, (n,), generator=g).float()
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1)


def moons(n: int, g: torch.Generator) -> Tensor:
    """Two interleaving half circles with N(0, 0.05^2) noise, centred and scaled to about [-2, 2]."""
    upper = torch.rand(n, generator=g) < 0.5
    theta = torch.rand(n, generator=g) * math.pi
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.6
    return pts + 0.05 * torch.randn(n, 2, generator=g)


TOY_SETS = {"8gaussians": eight_gaussians, "checkerboard": checkerboard, "moons": moons}


def load_data(cfg) -> tuple[Tensor, Tensor]:
    """(train, heldout) float32 tensors of shape (N, D) for a DataConfig."""
    name = cfg.name
    g = torch.Generator().manual_seed(cfg.seed)
    if name in TOY_SETS:
        points = TOY_SETS[name](cfg.n_train + cfg.n_heldout, g)
        return points[: cfg.n_train].contiguous(), points[cfg.n_train :].contiguous()
    if name.startswith("npy:"):
        return _split(_load_npy(name[4:]), cfg.heldout_fraction, g)
    raise ValueError(f"data.name: {name!r} is not one of {sorted(TOY_SETS)} or npy:PATH")


def _load_npy(path: str) -> Tensor:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data.name: npy file {path!r} not found; give an (N, D) float array saved by numpy.save")
    arr = np.load(p, allow_pickle=False)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"data.name: {path!r} must hold an (N, D) numeric array, got shape {arr.shape} {arr.dtype}")
    return torch.from_numpy(arr.astype(np.float32))


def _split(points: Tensor, heldout_fraction: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(len(points), generator=g)
    n_held = max(1, int(round(heldout_fraction * len(points))))
    if n_held >= len(points):
        raise ValueError(f"data.heldout_fraction={heldout_fraction} leaves no training rows out of {len(points)}")
    return points[perm[n_held:]].contiguous(), points[perm[:n_held]].contiguous()


def shard(points: Tensor, rank: int, world_size: int) -> Tensor:
    """This worker's share of the training set (every world_size-th row)."""
    return points[rank::world_size]
