"""The mapping function r(s, t): the slightly less noisy time s <= r < t whose prediction is the target
(method notes section 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from imm.maths.trajectories import Trajectory

MAPPINGS = ("constant_eta", "constant_t")


def mapping_fn(
    s: Tensor,
    t: Tensor,
    traj: Trajectory,
    kind: str,
    k: int,
    *,
    eta_max: float = 160.0,
    eta_min: float = 0.0,
    eps_t: float = 0.0,
    T: float | None = None,
    delta: float = 0.0,
) -> Tensor:
    """r(s, t), with s <= r < t whenever s < t.

    constant_eta (the paper's): r = max(s, eta_inv(eta_t - (eta_max - eta_min) / 2^k))
    constant_t:                 r = max(s, t - (T - eps_t) / 2^k)
    delta > 0 floors the step for low precision: r = max(s, min(t - delta, r)).
    """
    s64, t64 = s.double(), t.double()  # the decrement is ~1e-7 in t near T: compute it in float64, round once
    if kind == "constant_eta":
        eta_r = traj.eta(t64) - (eta_max - eta_min) / 2**k
        r = traj.eta_inv(eta_r.clamp_min(0))
    elif kind == "constant_t":
        T = traj.default_T if T is None else T
        r = t64 - (T - eps_t) / 2**k
    else:
        raise ValueError(f"unknown mapping {kind!r}; choose one of {list(MAPPINGS)}")
    if delta > 0:
        r = torch.minimum(r, t64 - delta)
    r = torch.maximum(r, s64).to(t.dtype)
    # Rounding to t's precision can land r on t itself; keep r < t (and r >= s: s < t by the time sampler).
    return torch.maximum(torch.minimum(r, torch.nextafter(t, torch.full_like(t, -1.0))), s)
