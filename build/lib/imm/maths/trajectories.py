"""Interpolants x_t = alpha_t x + sigma_t eps and the DDIM interpolant (method notes sections 1-2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Trajectory:
    """alpha_t, sigma_t on t in [0, 1]; eta_t = sigma_t / alpha_t; log-SNR lambda_t = -2 log eta_t. One subclass per
    interpolant owns its coefficients (as EDM's preconditioners do); what follows from them is written once here."""

    name: str
    default_T: float  # largest time used in training and sampling (eta_T is finite)

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def eta(self, t: Tensor) -> Tensor:
        return self.sigma(t) / self.alpha(t)

    def eta_inv(self, eta: Tensor) -> Tensor:
        raise NotImplementedError

    def cross(self, s: Tensor, t: Tensor) -> Tensor:
        """alpha_s sigma_t - sigma_s alpha_t, computed without cancellation (subclasses): > 0 whenever s < t, however
        close (the products' difference rounds to 0 near s = t)."""
        return self.alpha(s) * self.sigma(t) - self.sigma(s) * self.alpha(t)

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda_t = log(alpha_t^2 / sigma_t^2)."""
        return -2 * torch.log(self.eta(t))

    def neg_dlog_snr_dt(self, t: Tensor) -> Tensor:
        """-d lambda_t / dt = 2 eta'_t / eta_t."""
        raise NotImplementedError

    def __setstate__(self, state: dict) -> None:
        """Models pickled before the subclasses (promoted mlflow.pytorch models) hold a plain Trajectory: it becomes
        the subclass its name says (until models are stored without pickle)."""
        object.__setattr__(self, "__dict__", dict(state))
        if type(self) is Trajectory:
            object.__setattr__(self, "__class__", type(TRAJECTORIES[state["name"]]))


class OTFM(Trajectory):
    """Flow matching's straight path: alpha_t = 1 - t, sigma_t = t."""

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def eta(self, t: Tensor) -> Tensor:
        return t / (1 - t)

    def eta_inv(self, eta: Tensor) -> Tensor:
        return eta / (1 + eta)

    def cross(self, s: Tensor, t: Tensor) -> Tensor:
        return t - s

    def neg_dlog_snr_dt(self, t: Tensor) -> Tensor:
        return 2 / (t * (1 - t))


class Cosine(Trajectory):
    """The variance-preserving cosine path: alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2)."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def eta(self, t: Tensor) -> Tensor:
        return torch.tan(0.5 * math.pi * t)

    def eta_inv(self, eta: Tensor) -> Tensor:
        return torch.atan(eta) * (2 / math.pi)

    def cross(self, s: Tensor, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * (t - s))

    def neg_dlog_snr_dt(self, t: Tensor) -> Tensor:
        return 2 * math.pi / torch.sin(math.pi * t)


TRAJECTORIES: dict[str, Trajectory] = {
    "ot_fm": OTFM("ot_fm", default_T=0.994),
    "cosine": Cosine("cosine", default_T=0.996),
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
