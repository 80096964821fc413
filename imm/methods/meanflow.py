"""MeanFlow (Geng et al. 2025): the average velocity u(z_t, r, t) = (1 / (t - r)) int_r^t v(z_tau, tau) dtau on flow
matching's path z_t = (1 - t) x + t eps, learned from the MeanFlow identity

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),    d/dt u = v . grad_z u + d_t u  (along the flow)

with the conditional velocity v = eps - x in place of v(z_t, t), and the total derivative from one forward-mode JVP
along the tangent (v, 0, 1) of (z, r, t), under stop-gradient:

    u_tgt = v - (t - r) JVP,    L = sg(w) ||u_theta(z_t, r, t) - sg(u_tgt)||^2,    w = 1 / (||.||^2 + c)^p

t and r come from a logit-normal (the larger is t); a share `meanflow.r_equals_t` of the batch has r = t, where
u_tgt = v and the loss is flow matching's. A step from t to r is z_r = z_t - (t - r) u(z_t, r, t); one step is
z_0 = z_1 - u(z_1, 0, 1). Class-conditional models train guidance into u (`meanflow.guidance` omega,
`meanflow.guidance_mix` kappa): labelled samples regress on v~ = omega v + kappa u(z_t, t, t | c) + (1 - omega - kappa)
u(z_t, t, t | null) in place of v, so one step samples the guided distribution.
The network is IMM's (u = sigma_d G(c_in z, t, r), the euler_fm parameterisation, so f_{r,t} = z - (t - r) u is IMM's
one-step model and pushforward is MeanFlow's sampler).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor

from imm.checks import check_choice, check_range
from imm.maths.estimators import at_least_fp32
from imm.maths.trajectories import Trajectory, get_trajectory
from imm.methods.common import build_network, check_ot_fm, ot_fm_point
from imm.methods.imm import replay_rng
from imm.methods.registry import Method, register, resolved_s_embedding, resolved_T
from imm.networks.precond import EDM_TIME_SCALE, OneStepModel, bcast, unwrap

# k in a flow map's time inputs (k t, k r): the official MeanFlow, iMF and TVM code's unscaled 1, the default of
# meanflow.time_scale, tvm.time_scale and fmm.time_scale (shortcut models keep EDM's 1000, which they were tuned with).
FLOW_MAP_TIME_SCALE = 1.0


@dataclass
class MeanFlowConfig:
    r_equals_t: float = 0.75  # share of samples with r = t (the paper's best: 25% with r != t)
    time_mean: float = -0.4  # logit(t), logit(r) ~ N(time_mean, time_std^2)
    time_std: float = 1.0  # the std of that logit-normal
    adaptive_p: float = 1.0  # adaptive loss weight 1 / (||error||^2 + c)^p; p = 0 is plain squared error
    # the c of the adaptive weight: the official code's 0.01 (the paper's text: 1e-3). On digits (p = 1) the two read
    # the same 2-step energy to 4 digits per seed (sweeps/meanflow_c.yaml): a 64-d error is far above either
    adaptive_c: float = 0.01
    # the network sees (time_scale t, time_scale r), or (t - r) for the second with model.s_embedding=stride. The
    # official code's unscaled 1: at EDM's 1000 the time features oscillate 1000x faster in t, and so does the JVP's
    # d_t u in the target (2D: 1-step energy 0.08 -> 0.006). Models trained before this key carry 1000 in their weights.
    time_scale: float = FLOW_MAP_TIME_SCALE
    # the JVP's tangent in z: data (the conditional velocity eps - x, or train.teacher's: MeanFlow's) or model (the
    # model's own velocity u(z_t, t, t) under stop-gradient: improved MeanFlow's, Geng et al. 2025b, which also takes
    # r_equals_t 0.5 and adaptive_c 0.01). The target stays v - (t - r) du/dt.
    tangent: str = "data"
    jvp_fp32: bool = True  # the target's JVP in fp32 under bf16 autocast (the official code's): d_t u is a difference
    # Class-conditional models: guidance trained into u (the paper's CFG), sampled with cfg_scale 1. Labelled samples
    # regress on v~ = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null); omega = 1, kappa = 0: none.
    guidance: float = 1.0  # omega
    guidance_mix: float = 0.0  # kappa


class AverageVelocityModel(OneStepModel):
    """u(z_t, r, t) = sigma_d G(c_in z_t, t, r); `step` is the map z_t -> z_r."""

    def __init__(self, net, traj: Trajectory, sigma_d: float = 0.5, s_embedding: str = "identity",
                 time_scale: float = FLOW_MAP_TIME_SCALE):
        super().__init__(net, traj, "euler_fm", sigma_d, s_embedding)
        self.register_buffer("time_scale", torch.tensor(float(time_scale)))  # in the weights: they hold its meaning
        self._register_load_state_dict_pre_hook(_scale_of_older_models)

    def time_input_scale(self) -> Tensor:
        return self.time_scale

    def forward(self, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None = None, cfg_scale: float = 1.0) -> Tensor:
        return self.sigma_d * self.network_output(z, r, t, labels, cfg_scale)


def _scale_of_older_models(state_dict, prefix, *_):
    """Weights saved before time_scale was theirs were trained on EDM's 1000 t."""
    state_dict.setdefault(prefix + "time_scale", torch.tensor(EDM_TIME_SCALE))


class MeanFlowLoss:
    """MeanFlow's objective, built from the `meanflow` section (a MeanFlowConfig, or a run config's cfg.meanflow).
    Distilled (train.teacher): the teacher's velocity v(z_t, t) in place of eps - x, in the target and the JVP's
    tangent (the paper's distillation variant, and Flow Map Matching's Eulerian map distillation with stop-gradient)."""

    teacher = None  # imm.training.teacher.Teacher, set by build_loss

    def __init__(self, c: MeanFlowConfig, *, T: float):
        self.c, self.T = c, T

    def times(self, n: int, device) -> tuple[Tensor, Tensor]:
        """(t, r) with r <= t from a logit-normal, r = t for a share r_equals_t of them."""
        a, b = torch.sigmoid(self.c.time_mean + self.c.time_std * torch.randn(2, n, device=device)) * self.T
        t, r = torch.maximum(a, b), torch.minimum(a, b)
        return t, torch.where(torch.rand(n, device=device) < self.c.r_equals_t, t, r)

    def target(self, model: AverageVelocityModel, z: Tensor, v: Tensor, r: Tensor, t: Tensor,
               labels: Tensor | None = None) -> Tensor:
        """u_tgt = v - (t - r) (w . grad_z u + d_t u), the total derivative from one JVP along w = v (tangent=data)
        or w = u(z, t, t) (tangent=model), without gradient."""
        fp32 = torch.autocast(z.device.type, enabled=False) if self.c.jvp_fp32 else contextlib.nullcontext()
        with torch.no_grad(), fp32:
            if self.c.jvp_fp32:
                z, v, r, t = (at_least_fp32(a) for a in (z, v, r, t))
            tangent = v if self.c.tangent == "data" else model(z, t, t, labels).to(v.dtype)
            _, dudt = torch.func.jvp(lambda z_, t_: model(z_, r, t_, labels), (z, t), (tangent, torch.ones_like(t)))
        return (v - bcast(t - r, z) * dudt).detach()

    def guided_velocity(self, model: AverageVelocityModel, z: Tensor, v: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """v~ = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null) where the label is a class;
        v where it is the null label (the dropped labels train the unconditional u)."""
        null = torch.full_like(labels, model.net.num_classes)
        with torch.no_grad():
            u_null = model(z, t, t, null)
            u_c = model(z, t, t, labels) if self.c.guidance_mix else torch.zeros_like(v)
        omega, kappa = self.c.guidance, self.c.guidance_mix
        mixed = omega * v + kappa * u_c + (1 - omega - kappa) * u_null
        return torch.where(bcast(labels == null, v), v, mixed.to(v.dtype))

    def __call__(self, model, x: Tensor, labels: Tensor | None = None) -> Tensor:
        m = unwrap(model)
        t, r = self.times(x.shape[0], x.device)
        z, v = ot_fm_point(x, t, m.sigma_d)
        if self.teacher is not None:
            v = self.teacher.velocity(z, t, labels)
        if labels is not None and (self.c.guidance != 1 or self.c.guidance_mix != 0):
            v = self.guided_velocity(m, z, v, t, labels)
        with replay_rng(x.device):  # the online pass below sees the same dropout masks as the target's
            u_tgt = at_least_fp32(self.target(m, z, v, r, t, labels))
        err = (at_least_fp32(model(z, r, t, labels)) - u_tgt).flatten(1).square().sum(1)
        w = 1 / (err.detach() + self.c.adaptive_c) ** self.c.adaptive_p
        return (w * err).mean()


def instantaneous_velocity(model, z: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
    """v(z, t) = u(z, t, t): an average-velocity model's velocity at gap 0 (what makes it a teacher)."""
    return model(z, t, t, labels)


def build_model(cfg: DictConfig, data_shape: tuple[int, ...], sigma_d: float, num_classes: int = 0,
                time_scale: float | None = None):
    """MeanFlow's model; time_scale None = meanflow.time_scale (shortcut models pass their own)."""
    return AverageVelocityModel(build_network(cfg, data_shape, num_classes), get_trajectory(cfg.trajectory),
                                sigma_d=sigma_d, s_embedding=resolved_s_embedding(cfg),
                                time_scale=cfg.meanflow.time_scale if time_scale is None else time_scale)


def build_loss(cfg: DictConfig) -> MeanFlowLoss:
    return MeanFlowLoss(cfg.meanflow, T=resolved_T(cfg))


TANGENTS = ("data", "model")


def check_section(cfg: DictConfig) -> None:
    check_choice(cfg, "meanflow.tangent", TANGENTS)
    check_range(cfg, "meanflow.r_equals_t", 0.0, 1.0)
    check_range(cfg, "meanflow.time_std", 0.0, None, strict_low=True)
    check_range(cfg, "meanflow.adaptive_p", 0.0, None)
    check_range(cfg, "meanflow.adaptive_c", 0.0, None, strict_low=True)
    check_range(cfg, "meanflow.time_scale", 0.0, None, strict_low=True)
    check_range(cfg, "meanflow.guidance", 0.0, None, strict_low=True)
    check_range(cfg, "meanflow.guidance_mix", 0.0, 1.0)


METHOD = register(Method(
    "meanflow", "MeanFlow: the average velocity u(z, r, t) from the MeanFlow identity (one JVP per step)",
    model_kind="average_velocity", build_model=build_model, build_loss=build_loss,
    section="meanflow", config=MeanFlowConfig, check_section=check_section, check_run=check_ot_fm,
    velocity=instantaneous_velocity, distills=True,
    default_T=1.0, s_embedding="stride",  # the official code's: from pure noise, the network sees (t, t - s)
))
