"""Flow matching (Lipman et al. 2023; method notes section 10): v-prediction on the ot_fm path,
L = || v_theta(x_t, t) - (eps - x) ||^2 with x_t = (1 - t) x + t eps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from imm.maths.estimators import at_least_fp32
from imm.maths.trajectories import get_trajectory
from imm.methods.common import build_network, check_ot_fm, ot_fm_point
from imm.methods.registry import Method, register, resolved_s_embedding, resolved_T
from imm.networks import VelocityModel
from imm.networks.precond import unwrap


@dataclass
class FlowMatchingLoss:
    eps_t: float
    T: float

    def __call__(self, model, x: Tensor, labels: Tensor | None = None) -> Tensor:
        t = self.eps_t + (self.T - self.eps_t) * torch.rand(x.shape[0], device=x.device)
        x_t, v = ot_fm_point(x, t, unwrap(model).sigma_d)
        return (at_least_fp32(model(x_t, t, labels)) - v).square().mean()


METHOD = register(Method(
    "fm", "flow matching: v-prediction on the ot_fm path",
    model_kind="velocity",
    build_model=lambda cfg, shape, sigma_d, classes=0: VelocityModel(
        build_network(cfg, shape, classes), get_trajectory(cfg.trajectory), sigma_d=sigma_d,
        s_embedding=resolved_s_embedding(cfg)),
    build_loss=lambda cfg: FlowMatchingLoss(eps_t=cfg.eps_t, T=resolved_T(cfg)),
    check_run=check_ot_fm, velocity=lambda model, z, t, labels=None: model(z, t, labels),
    # its network sees (t, t - s) = (t, 0), the flow maps' inputs at gap 0: a teacher whose network starts them
    # (train.init_from) as it is
    s_embedding="stride",
))
