"""Interpolants x_t = alpha_t x + sigma_t eps and the DDIM interpolant (method notes sections 1-2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Trajectory:
    """alpha_t, sigma_t on t in [0, 1]; eta_t = sigma_t / alpha_t; log-SNR lambda_t = -2 log eta_t."""

    name: str
    default_T: float  # largest time used in training and sampling (eta_T is finite)

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t if self.name == "ot_fm" else torch.cos(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return t if self.name == "ot_fm" else torch.sin(0.5 * math.pi * t)

    def eta(self, t: Tensor) -> Tensor:
        return t / (1 - t) if self.name == "ot_fm" else torch.tan(0.5 * math.pi * t)

    def eta_inv(self, eta: Tensor) -> Tensor:
        return eta / (1 + eta) if self.name == "ot_fm" else torch.atan(eta) * (2 / math.pi)

    def cross(self, s: Tensor, t: Tensor) -> Tensor:
        """alpha_s sigma_t - sigma_s alpha_t, computed without cancellation: t - s for ot_fm, sin(pi (t - s) / 2) for
        cosine. It is > 0 whenever s < t, however close (the products' difference rounds to 0 near s = t)."""
        return t - s if self.name == "ot_fm" else torch.sin(0.5 * math.pi * (t - s))

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda_t = log(alpha_t^2 / sigma_t^2)."""
        return -2 * torch.log(self.eta(t))

    def neg_dlog_snr_dt(self, t: Tensor) -> Tensor:
        """-d lambda_t / dt = 2 eta'_t / eta_t: 2 / (t (1 - t)) for ot_fm, 2 pi / sin(pi t) for cosine."""
        if self.name == "ot_fm":
            return 2 / (t * (1 - t))
        return 2 * math.pi / torch.sin(math.pi * t)


TRAJECTORIES = {
    "ot_fm": Trajectory("ot_fm", default_T=0.994),
    "cosine": Trajectory("cosine", default_T=0.996),
}


def get_trajectory(name: str) -> Trajectory:
    try:
        return TRAJECTORIES[name]
    except KeyError:
        raise ValueError(f"unknown trajectory {name!r}; choose one of {sorted(TRAJECTORIES)}") from None


def ddim(x_t: Tensor, x: Tensor, s: Tensor, t: Tensor, traj: Trajectory) -> Tensor:
    """DDIM(x_t, x, s, t) = (alpha_s - (sigma_s / sigma_t) alpha_t) x + (sigma_s / sigma_t) x_t  (paper eq. 11).

    Moves x_t at time t to time s <= t along the interpolant that passes through the clean estimate x.
    s and t broadcast against x (shape them (B, 1, ...)).
    """
    ratio = traj.sigma(s) / traj.sigma(t)
    return (traj.alpha(s) - ratio * traj.alpha(t)) * x + ratio * x_t
