"""The loss weighting w(s, t) (paper eq. 13) and the time distribution p(s, t) (method notes 5, 8)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from imm.trajectories import Trajectory

WEIGHTINGS = ("sigmoid", "constant")
TIME_SAMPLERS = ("uniform", "lognormal")


@dataclass(frozen=True)
class Weighting:
    """w(s, t) = 1/2 sigmoid(b - lambda_t) (-d lambda_t / dt)  *  alpha_t^a  *  1 / (alpha_t^2 + sigma_t^2).

    The three factors switch on one by one (`elbo`, `alpha`, `norm`) to reproduce the paper's cumulative
    ablation (w = 1; + ELBO factor; + alpha_t^a; + 1/(alpha^2 + sigma^2)). `kind="constant"` is w = 1.
    Only t enters: the paper's w(s, t) does not depend on s.
    """

    kind: str = "sigmoid"
    a: float = 1.0
    b: float = 5.0
    elbo: bool = True
    alpha: bool = True
    norm: bool = True

    def __call__(self, t: Tensor, traj: Trajectory) -> Tensor:
        w = torch.ones_like(t)
        if self.kind == "constant":
            return w
        if self.kind != "sigmoid":
            raise ValueError(f"unknown weighting {self.kind!r}; choose one of {list(WEIGHTINGS)}")
        if self.elbo:
            w = w * 0.5 * torch.sigmoid(self.b - traj.log_snr(t)) * traj.neg_dlog_snr_dt(t)
        alpha_t, sigma_t = traj.alpha(t), traj.sigma(t)
        if self.alpha:
            w = w * alpha_t**self.a
        if self.norm:
            w = w / (alpha_t**2 + sigma_t**2)
        return w


def sample_times(
    n: int,
    traj: Trajectory,
    eps_t: float,
    T: float,
    kind: str = "uniform",
    *,
    p_mean: float = -0.4,
    p_std: float = 2.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw n pairs eps_t <= s <= t <= T.

    uniform (the paper's): t ~ U(eps_t, T), s | t ~ U(eps_t, t).
    lognormal: log eta_t ~ N(p_mean, p_std^2) (EDM-style, eta in units of the data's std), t clipped
    to [eps_t, T], then s | t ~ U(eps_t, t).
    """
    u = torch.rand(2, n, generator=generator, device=device)
    if kind == "uniform":
        t = eps_t + (T - eps_t) * u[0]
    elif kind == "lognormal":
        z = torch.randn(n, generator=generator, device=device)
        t = traj.eta_inv(torch.exp(p_mean + p_std * z)).clamp(eps_t, T)
    else:
        raise ValueError(f"unknown time sampler {kind!r}; choose one of {list(TIME_SAMPLERS)}")
    s = eps_t + (t - eps_t) * u[1]
    return s, t
