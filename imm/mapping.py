"""The mapping function r(s, t): the slightly less noisy time s <= r < t whose prediction is the target
(method notes section 4)."""

from __future__ import annotations

import torch
from torch import Tensor

from imm.trajectories import Trajectory

MAPPINGS = ("constant_eta", "constant_t")


def mapping_fn(
    s: Tensor,
    t: Tensor,
    traj: Trajectory,
    kind: str = "constant_eta",
    k: int = 15,
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
    if kind == "constant_eta":
        eta_r = traj.eta(t) - (eta_max - eta_min) / 2**k
        r = traj.eta_inv(eta_r.clamp_min(0))
    elif kind == "constant_t":
        T = traj.default_T if T is None else T
        r = t - (T - eps_t) / 2**k
    else:
        raise ValueError(f"unknown mapping {kind!r}; choose one of {list(MAPPINGS)}")
    if delta > 0:
        r = torch.minimum(r, t - delta)
    # Rounding near t = T can land r on t itself in float32; keep the strict inequality.
    r = torch.minimum(r, torch.nextafter(t, torch.full_like(t, -1.0)))
    return torch.maximum(r, s)
