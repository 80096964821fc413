"""The loss weighting w(s, t) (paper eq. 13) and the time distribution p(s, t) (method notes 5, 8)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from imm.maths.trajectories import Trajectory

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


# The smallest t - s the sampler draws (and t - eps_t): s < t strictly, so c_out(s, t) != 0 and the kernel scale
# 1 / |c_out| is finite, and t > 0 where eps_t = 0, where the sigmoid weighting is 0 * inf. About 16 float32 spacings
# at t ~ 1, far below any step a sampler takes.
MIN_GAP = 1e-6


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
    """Draw n pairs eps_t <= s < t <= T with t - s >= MIN_GAP.

    uniform (the paper's): t ~ U(eps_t + MIN_GAP, T), s | t ~ U(eps_t, t - MIN_GAP).
    lognormal: log eta_t ~ N(p_mean, p_std^2) (EDM-style, eta in units of the data's std) truncated to
    [eps_t + MIN_GAP, T] by inverse CDF (a clamp would put whole groups at t = eps_t = s), then s | t as above.
    """
    lo = eps_t + MIN_GAP
    u = torch.rand(2, n, generator=generator, device=device)
    if kind == "uniform":
        t = lo + (T - lo) * u[0]
    elif kind == "lognormal":
        z_lo, z_hi = ((torch.log(traj.eta(torch.tensor(v, dtype=torch.float64))) - p_mean) / p_std for v in (lo, T))
        c_lo, c_hi = torch.special.ndtr(z_lo), torch.special.ndtr(z_hi)
        z = torch.special.ndtri(c_lo + (c_hi - c_lo) * u[0].double())
        t = traj.eta_inv(torch.exp(p_mean + p_std * z)).float().clamp(lo, T)
    else:
        raise ValueError(f"unknown time sampler {kind!r}; choose one of {list(TIME_SAMPLERS)}")
    s = (eps_t + (t - lo) * u[1]).minimum(t - MIN_GAP)  # rounding can't reach t
    return s, t
