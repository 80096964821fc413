"""Terminal Velocity Matching (Zhou, Parger, Haque and Song 2025, arXiv 2511.19797): a flow map
f(z_t, t, s) = z_t - (t - s) u(z_t, s, t) from time t to s <= t on flow matching's path, trained on its terminal
velocity: moving the end point s of a trajectory moves f at the velocity of the flow there,

    d/ds f(z_t, t, s) = v(f(z_t, t, s), s),    d/ds f = u - (t - s) d_s u    (one forward-mode JVP in s)

with v at the end point the model's own instantaneous velocity u(., s, s) under stop-gradient, from the online weights
or, by default (`tvm.target_ema` 0.99, the official code's), from a fast EMA of them; plus flow matching at gap 0,
which trains that velocity:

    L = mean ||u - (t - s) d_s u - sg(u(f, s, s))||^2 + mean ||u(z_s', s', s') - (eps - x)||^2

The gradient flows through the JVP (unlike MeanFlow's target); flow matching's half is a plain forward.
Times as the official code draws them: the gap t - s ~ sigmoid(N(gap_mean, gap_std^2)), s ~ a logit-normal truncated
to s <= T - gap, t = s + gap; the flow-matching time s' ~ the untruncated logit-normal. Class-conditional models train
guidance in (`tvm.guidance` w): labelled samples regress flow matching on w v + (1 - w) u(z, s', s' | null), so one
step samples the guided distribution (without the official code's output scaling by w).
The model and sampler are MeanFlow's (imm.methods.meanflow): u is an average velocity, a step is z_s = z_t - (t - s) u.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from omegaconf import DictConfig
from torch import Tensor

from imm.checks import ConfigError, check_range
from imm.maths.estimators import at_least_fp32
from imm.methods.common import check_ot_fm
from imm.methods.meanflow import FLOW_MAP_TIME_SCALE, instantaneous_velocity
from imm.methods.meanflow import build_model as meanflow_model
from imm.methods.registry import Method, register, resolved_T
from imm.networks.precond import bcast, unwrap


@dataclass
class TVMConfig:
    time_mean: float = -0.4  # logit(s) ~ N(time_mean, time_std^2), truncated to s <= T - gap (the official s_P_mean)
    time_std: float = 1.0  # the std of that logit-normal (the official s_P_std)
    gap_mean: float = -0.8  # logit((t - s) / T) ~ N(gap_mean, gap_std^2) (the official gap_P_mean)
    gap_std: float = 1.0  # the std of the gap's logit-normal (the official gap_P_std)
    time_scale: float = FLOW_MAP_TIME_SCALE  # the network sees (time_scale t, time_scale s), as MeanFlow's
    guidance: float = 1.0  # w, guidance trained in for class-conditional models; 1 = none
    # the end point's velocity (and guidance's null velocity) from an EMA of the weights at this decay, updated after
    # every optimizer step and kept in the checkpoint (the official ema_target_beta: 0.99, which the official code
    # cannot run without); 0: the online weights (this project's earlier default: digits fd 1.08 and 1.18 at 2
    # steps against 0.72 and 0.57 at 0.99, two seeds)
    target_ema: float = 0.99


class TVMLoss:
    """TVM's objective, built from the `tvm` section (a TVMConfig, or a run config's cfg.tvm). Distilled
    (train.teacher): the teacher's velocity at the end point and as flow matching's target (the official code's
    teacher_model hook; Flow Map Matching's Lagrangian map distillation with stop-gradient)."""

    teacher = None  # imm.training.teacher.Teacher, set by build_loss

    def __init__(self, c: TVMConfig, *, T: float):
        self.c, self.T = c, T
        self.target: torch.nn.Module | None = None  # the EMA of the weights (tvm.target_ema > 0), made at first use
        self._saved_target: dict | None = None  # a checkpoint's target, loaded when the target is made

    def velocity_model(self, model):
        """What gives the flow's velocity where the loss needs it without gradient: the EMA target (made from the
        weights at first use), else the model."""
        if self.c.target_ema <= 0:
            return model
        if self.target is None:
            net = unwrap(model)
            self.target = copy.deepcopy(getattr(net, "_orig_mod", net)).requires_grad_(False).eval()  # not compiled
            if self._saved_target is not None:
                self.target.load_state_dict(self._saved_target)
        return self.target

    @torch.no_grad()
    def after_step(self, model) -> None:
        """The training loop's call after each optimizer step: the target moves toward the new weights."""
        if self.target is not None:
            for p_target, p in zip(self.target.parameters(), unwrap(model).parameters(), strict=True):
                p_target.lerp_(p.detach(), 1 - self.c.target_ema)

    def state_dict(self) -> dict:
        """The target's weights, for the checkpoint: a resumed run ends as an uninterrupted one."""
        return {"target": self.target.state_dict()} if self.target is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._saved_target, self.target = state.get("target"), None

    def times(self, n: int, device) -> tuple[Tensor, Tensor, Tensor]:
        """(t, s, s'): s <= t with t - s from the gap's logit-normal, s from the truncated logit-normal; s' for flow
        matching from the untruncated one."""
        c = self.c
        gap = torch.sigmoid(c.gap_mean + c.gap_std * torch.randn(n, device=device))
        normal = torch.distributions.Normal(c.time_mean, c.time_std)
        top = normal.cdf(torch.logit(1 - gap))  # P(logit s <= logit(1 - gap))
        s = torch.sigmoid(normal.icdf((torch.rand(n, device=device) * top).clamp(1e-7, 1 - 1e-7)))
        t = torch.minimum(s + gap, torch.ones_like(s))
        s_fm = torch.sigmoid(c.time_mean + c.time_std * torch.randn(n, device=device))
        return t * self.T, s * self.T, s_fm * self.T

    def fm_target(self, model, z: Tensor, v: Tensor, s: Tensor, labels: Tensor | None) -> Tensor:
        """v, or for labelled samples of a guided model w v + (1 - w) u(z, s, s | null) (the null label trains v)."""
        w = self.c.guidance
        if labels is None or w == 1:
            return v
        null = torch.full_like(labels, model.net.num_classes)
        with torch.no_grad():
            mixed = w * v + (1 - w) * self.velocity_model(model)(z, s, s, null)
        return torch.where(bcast(labels == null, v), v, mixed.to(v.dtype))

    @staticmethod
    def velocity_and_jvp(model, z: Tensor, s: Tensor, t: Tensor, ds: Tensor, labels: Tensor | None = None):
        """(u(z, s, t), ds * d_s u(z, s, t)): one network call on dual numbers, differentiable in the weights."""
        with fwAD.dual_level():
            out = fwAD.unpack_dual(model(z, fwAD.make_dual(s, ds), t, labels))
        return at_least_fp32(out.primal), at_least_fp32(out.tangent)

    def terminal_error(self, model, z_t: Tensor, s: Tensor, t: Tensor, u: Tensor, du_ds: Tensor,
                       labels: Tensor | None = None) -> Tensor:
        """Per sample, mean ||d/ds f - sg(v(f, s))||^2 with d/ds f = u - (t - s) d_s u, v the model's own velocity
        u(., s, s) (its EMA target's, or the teacher's); 0 where s = t."""
        gap = bcast(t - s, u)
        f = z_t - (gap * u).to(z_t.dtype)
        with torch.no_grad():  # the flow's velocity at the end point
            v_end = at_least_fp32(self.teacher.velocity(f, s, labels) if self.teacher is not None
                                  else self.velocity_model(model)(f, s, s, labels))
        err = (u - gap * du_ds - v_end).flatten(1).square().mean(1)
        return torch.where(torch.isclose(s, t), torch.zeros_like(err), err)  # no trajectory to move

    def __call__(self, model, x: Tensor, labels: Tensor | None = None) -> Tensor:
        m, n = unwrap(model), x.shape[0]
        t, s, s_fm = self.times(n, x.device)
        eps = torch.randn_like(x) * m.sigma_d
        z_t, z_fm = ((1 - bcast(u, x)) * x + bcast(u, x) * eps for u in (t, s_fm))
        v = self.teacher.velocity(z_fm, s_fm, labels) if self.teacher is not None else \
            self.fm_target(m, z_fm, eps - x, s_fm, labels)
        # The flow-matching half is a plain call: on dual numbers (tangent 0) it cost the JVP's 3x a forward for
        # nothing (TVM's step 6.2x flow matching's against 4.2x; benchmarks/speed/step_cost.py). Under DDP the two
        # calls are two forwards before one backward, which sums each weight's gradient once.
        u, du_ds = self.velocity_and_jvp(model, z_t, s, t, torch.ones_like(s), labels)
        terminal = self.terminal_error(m, z_t, s, t, u, du_ds, labels)
        fm = (at_least_fp32(model(z_fm, s_fm, s_fm, labels)) - at_least_fp32(v)).flatten(1).square().mean(1)
        return (terminal + fm).mean()


def build_model(cfg: DictConfig, data_shape: tuple[int, ...], sigma_d: float, num_classes: int = 0):
    return meanflow_model(cfg, data_shape, sigma_d, num_classes, time_scale=cfg.tvm.time_scale)


def check_section(cfg: DictConfig) -> None:
    check_range(cfg, "tvm.time_std", 0.0, None, strict_low=True)
    check_range(cfg, "tvm.gap_std", 0.0, None, strict_low=True)
    check_range(cfg, "tvm.time_scale", 0.0, None, strict_low=True)
    check_range(cfg, "tvm.guidance", 0.0, None, strict_low=True)
    check_range(cfg, "tvm.target_ema", 0.0, 1.0)


def check_run(cfg: DictConfig) -> None:
    """What a TVM run cannot do: another trajectory, or guidance while distilling (the targets are the teacher's
    velocities, so tvm.guidance would be silently ignored)."""
    check_ot_fm(cfg)
    if cfg.train.teacher and cfg.tvm.guidance != 1:
        raise ConfigError(f"tvm.guidance: {cfg.tvm.guidance} is not used by a distilled TVM (train.teacher), whose "
                          "targets are the teacher's velocities; set tvm.guidance=1, or distill a guided teacher")


METHOD = register(Method(
    "tvm", "Terminal Velocity Matching: a flow map trained on the velocity at its end point (one JVP in s per step)",
    model_kind="average_velocity", build_model=build_model,
    build_loss=lambda cfg: TVMLoss(cfg.tvm, T=resolved_T(cfg)), section="tvm",
    config=TVMConfig, check_section=check_section, check_run=check_run,
    velocity=instantaneous_velocity, distills=True,
    default_T=1.0, s_embedding="stride",  # the official code's: from pure noise, the network sees (t, t - s)
))
