"""Kernels on groups of flattened samples (method notes section 7).

A kernel maps x: (..., M, D), y: (..., N, D) and a scale broadcastable to (...) to the Gram matrix
(..., M, N). The scale is w~(s, t) = 1 / |c_out(s, t)| of the parameterisation, so distances are
measured in units of how far the network's output can move the sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Kernel = Callable[[Tensor, Tensor, Tensor], Tensor]


def _sq_dist(x: Tensor, y: Tensor) -> Tensor:
    """Exact ||x_i - y_j||^2 (no x^2 + y^2 - 2xy cancellation: groups are small, distances can be tiny)."""
    return (x.unsqueeze(-2) - y.unsqueeze(-3)).square().sum(-1)


def _dist(x: Tensor, y: Tensor) -> Tensor:
    """max(||x - y||_2, 1e-8), with a zero (not NaN) gradient where the floor is active."""
    return _sq_dist(x, y).clamp_min(1e-16).sqrt()


def laplace(x: Tensor, y: Tensor, scale: Tensor) -> Tensor:
    """k(x, y) = exp(-w~ max(||x - y||, 1e-8) / D): the paper's kernel."""
    return torch.exp(-scale[..., None, None] * _dist(x, y) / x.shape[-1])


def rbf(x: Tensor, y: Tensor, scale: Tensor) -> Tensor:
    """k(x, y) = exp(-w~ ||x - y||^2 / D)."""
    return torch.exp(-scale[..., None, None] * _sq_dist(x, y) / x.shape[-1])


def energy(x: Tensor, y: Tensor, scale: Tensor) -> Tensor:
    """k(x, y) = -||x - y||: conditionally positive definite; with M = 1 IMM becomes a consistency model."""
    return -_dist(x, y)


KERNELS: dict[str, Kernel] = {"laplace": laplace, "rbf": rbf, "energy": energy}


def get_kernel(name: str) -> Kernel:
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; choose one of {sorted(KERNELS)}") from None
