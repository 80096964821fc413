"""Flow map matching's distillation (Boffi, Albergo and Vanden-Eijnden 2024, arXiv 2406.07507): a flow map
X_{t->s}(z) = z - (t - s) u(z, s, t) learned from a trained teacher's velocity v_T alone (train.teacher), through one
of two conditions that the flow map of v_T meets and that determine it:

    lagrangian (LMD)   d/ds X_{t->s}(z_t) = v_T(X_{t->s}(z_t), s)                   the end point moves with the flow
    eulerian   (EMD)   d/dt X_{t->s}(z_t) + (v_T(z_t, t) . grad_z) X_{t->s}(z_t) = 0  the map is constant along it

In u the residuals are

    LMD   u - (t - s) d_s u - v_T(z_t - (t - s) u, s)          (TVM's terminal condition, with the teacher)
    EMD   u - v_T(z_t, t) + (t - s) du/dt along (v_T, 0, 1)   (MeanFlow's identity, with the teacher)

both squared and differentiated in full, through the JVP and (LMD) through the teacher's input, as the paper writes
them; MeanFlow and TVM with train.teacher are the same conditions with stop-gradient targets. LMD differs from TVM
distilled by one gradient path, through the teacher's input X_{t->s}: `fmm.teacher_grad=false` stops it there. Where
the teacher's velocity is steep between modes (a memorising teacher's), that path's Jacobian is large. Times are
TVM's sampler (the `tvm` section's keys); model and sampler MeanFlow's.

Both conditions fix the map only from its value at gap 0, u(z, t, t) = v_T(z, t). The paper draws (s, t) uniformly, so
small gaps are drawn; TVM's sampler almost never draws them (t - s ~ sigmoid(N(-0.8, 1))), and without them both
objectives lost the data on digits (energy 0.5 at 2 steps). `fmm.anchor` adds that condition as a term at TVM's
flow-matching time s', ||u(z_s', s', s') - v_T(z_s', s')||^2, as TVM adds flow matching. As in TVM, the anchor is a
plain network call (on dual numbers with a zero tangent it cost 3x a forward for nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from omegaconf import DictConfig
from torch import Tensor

from imm.checks import ConfigError, check_choice, check_range
from imm.maths.estimators import at_least_fp32
from imm.methods.common import check_ot_fm, ot_fm_point
from imm.methods.meanflow import FLOW_MAP_TIME_SCALE, instantaneous_velocity
from imm.methods.meanflow import build_model as meanflow_model
from imm.methods.registry import Method, register, resolved_T
from imm.methods.tvm import TVMLoss
from imm.networks.precond import bcast, unwrap

OBJECTIVES = ("lagrangian", "eulerian")


@dataclass
class FMMConfig:
    objective: str = "lagrangian"  # lagrangian (LMD: the end point follows the teacher) or eulerian (EMD)
    time_scale: float = FLOW_MAP_TIME_SCALE  # the network sees (time_scale t, time_scale s), as MeanFlow's
    anchor: bool = True  # add u(z, s', s') = v_T(z, s') at gap 0, which TVM's time sampler almost never draws
    teacher_grad: bool = True  # LMD: differentiate through the teacher's input too (the paper's); false: TVM's paths


class FMMLoss:
    """LMD or EMD from the `fmm` section, with (t, s) from the `tvm` section's sampler; train.teacher is required."""

    teacher = None  # imm.training.teacher.Teacher, set by build_loss
    diagnose = False  # set by the training loop on the steps that log

    def __init__(self, c: FMMConfig, times: TVMLoss):
        self.c, self.times = c, times.times
        self.diagnostics: dict[str, float] = {}  # LMD's gradient norms by path, from the last diagnosed call

    def gradient_paths(self, model, residual: Tensor, own: Tensor) -> dict[str, float]:
        """The norms of the LMD term's gradient (over the model's parameters; the anchor's term left out) through
        the map's own terms and through the teacher's input: `own` is the residual with the teacher's velocity held
        fixed. Two extra backward passes (one with fmm.teacher_grad=false), on the steps that log (each micro-batch
        of such a step; the last one's are logged)."""
        params = [p for p in model.parameters() if p.requires_grad]

        def grads(r: Tensor) -> list[Tensor]:
            gs = torch.autograd.grad(r.square().mean(), params, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, gs, strict=True)]

        norm = lambda gs: float(sum(g.double().square().sum() for g in gs)) ** 0.5  # noqa: E731
        mine = grads(own)
        if not self.c.teacher_grad:
            return {"fmm/grad_norm_own": norm(mine), "fmm/grad_norm_teacher_input": 0.0}
        full = grads(residual)
        return {"fmm/grad_norm_own": norm(mine),
                "fmm/grad_norm_teacher_input": norm([f - m for f, m in zip(full, mine, strict=True)])}

    def lagrangian(self, model, z: Tensor, s: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """The LMD residual."""
        u, du_ds = TVMLoss.velocity_and_jvp(model, z, s, t, torch.ones_like(s), labels)
        gap = bcast(t - s, u)
        end = z - (gap * u).to(z.dtype)
        if not self.c.teacher_grad:  # the one path by which LMD's gradient differs from TVM distilled's
            end = end.detach()
        v_end = self.teacher.velocity(end, s, labels, grad=self.c.teacher_grad)
        residual = u - gap * du_ds - at_least_fp32(v_end)
        if self.diagnose and torch.is_grad_enabled():
            own = u - gap * du_ds - at_least_fp32(v_end).detach()
            self.diagnostics = self.gradient_paths(model, residual, own)
        return residual

    def eulerian(self, model, z: Tensor, s: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """The EMD residual."""
        v = self.teacher.velocity(z, t, labels)
        with fwAD.dual_level():
            out = fwAD.unpack_dual(model(fwAD.make_dual(z, v.to(z.dtype)), s, fwAD.make_dual(t, torch.ones_like(t)),
                                         labels))
        u, dudt = at_least_fp32(out.primal), at_least_fp32(out.tangent)
        return u - at_least_fp32(v) + bcast(t - s, u) * dudt

    def __call__(self, model, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.teacher is None:
            raise ValueError("method=fmm distills train.teacher, and none was given")
        m, n = unwrap(model), x.shape[0]
        t, s, s_fm = self.times(n, x.device)
        z = ot_fm_point(x, t, m.sigma_d)[0]
        loss = getattr(self, self.c.objective)(model, z, s, t, labels).flatten(1).square().mean()
        if self.c.anchor:
            z_fm, _ = ot_fm_point(x, s_fm, m.sigma_d)
            v_fm = at_least_fp32(self.teacher.velocity(z_fm, s_fm, labels))
            loss = loss + (at_least_fp32(model(z_fm, s_fm, s_fm, labels)) - v_fm).flatten(1).square().mean()
        return loss


def check_section(cfg: DictConfig) -> None:
    check_choice(cfg, "fmm.objective", OBJECTIVES)
    check_range(cfg, "fmm.time_scale", 0.0, None, strict_low=True)
    if not cfg.fmm.teacher_grad and cfg.fmm.objective != "lagrangian":
        raise ConfigError("fmm.teacher_grad: false applies to fmm.objective=lagrangian only (the Eulerian residual "
                          "has no gradient through the teacher's input)")


METHOD = register(Method(
    "fmm", "flow map matching's distillation of train.teacher: Lagrangian (LMD) or Eulerian (EMD) map distillation",
    model_kind="average_velocity",
    build_model=lambda cfg, shape, sigma_d, classes=0: meanflow_model(cfg, shape, sigma_d, classes,
                                                                      time_scale=cfg.fmm.time_scale),
    build_loss=lambda cfg: FMMLoss(cfg.fmm, TVMLoss(cfg.tvm, T=resolved_T(cfg))),
    section="fmm", config=FMMConfig, check_section=check_section, check_run=check_ot_fm,
    velocity=instantaneous_velocity, distills=True, needs_teacher=True,
    default_T=1.0, s_embedding="stride",  # TVM's (its sampler and model): from pure noise, inputs (t, t - s)
))
