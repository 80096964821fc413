"""The one-step model f_{s,t}(x_t) built from a network G (method notes section 3).

G sees c_in x_t with c_in = 1 / (sigma_d sqrt(alpha_t^2 + sigma_t^2)), c_noise(t) = 1000 t, and s as
c_noise(s) (`identity`) or 1000 (t - s) (`stride`). Every parameterisation gives f_{t,t}(x_t) = x_t.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from imm.maths.trajectories import Trajectory, ddim

S_EMBEDDINGS = ("identity", "stride")
# The kernel scale's floor on |c_out|: far below what any sampled (s, t) gives (t - s >= 1e-6, so |c_out| >~ 1e-6
# sigma_d), it only keeps 1 / |c_out| finite where s = t is forced, so that 0 * inf never reaches a gradient.
MIN_C_OUT = 1e-20


EDM_TIME_SCALE = 1000.0  # c_noise(t) = 1000 t: EDM's and the paper's time input, which flow maps may rescale


def bcast(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against x."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class Parameterization:
    """How f_{s,t} mixes x_t and the network output g: one small class per scheme owns its coefficients (as EDM's
    VPPrecond, EDMPrecond do). c_out = df/dg sets the kernel scale 1 / |c_out|, so the two always agree."""

    def combine(self, traj: Trajectory, x_t: Tensor, g: Tensor, s: Tensor, t: Tensor, sigma_d: Tensor) -> Tensor:
        raise NotImplementedError

    def c_out(self, traj: Trajectory, s: Tensor, t: Tensor, sigma_d: Tensor) -> Tensor:
        raise NotImplementedError


class SimpleEDM(Parameterization):
    """f = c_skip x_t + c_out g (best on CIFAR-10)."""

    def coefficients(self, traj: Trajectory, s: Tensor, t: Tensor, sigma_d: Tensor) -> tuple[Tensor, Tensor]:
        """c_skip = (a_t a_s + s_t s_s) / (a_t^2 + s_t^2), c_out = -(a_s s_t - a_t s_s) sigma_d / sqrt(a_t^2 + s_t^2)."""
        a_t, s_t, a_s, s_s = traj.alpha(t), traj.sigma(t), traj.alpha(s), traj.sigma(s)
        norm = a_t**2 + s_t**2
        return (a_t * a_s + s_t * s_s) / norm, -traj.cross(s, t) * sigma_d / torch.sqrt(norm)

    def combine(self, traj, x_t, g, s, t, sigma_d):
        c_skip, c_out = self.coefficients(traj, s, t, sigma_d)
        return bcast(c_skip, x_t) * x_t + bcast(c_out, x_t) * g

    def c_out(self, traj, s, t, sigma_d):
        return self.coefficients(traj, s, t, sigma_d)[1]


class EulerFM(Parameterization):
    """f = x_t - (t - s) sigma_d g: g is a velocity in units of sigma_d (ImageNet's)."""

    def combine(self, traj, x_t, g, s, t, sigma_d):
        return x_t - bcast((t - s) * sigma_d, x_t) * g

    def c_out(self, traj, s, t, sigma_d):
        return (t - s) * sigma_d


class Identity(Parameterization):
    """f = DDIM(x_t, g, s, t): g predicts clean data; c_out = (alpha_s sigma_t - sigma_s alpha_t) / sigma_t."""

    def combine(self, traj, x_t, g, s, t, sigma_d):
        return ddim(x_t, g, bcast(s, x_t), bcast(t, x_t), traj)

    def c_out(self, traj, s, t, sigma_d):
        return traj.cross(s, t) / traj.sigma(t)


PARAMETERIZATIONS: dict[str, Parameterization] = {"simple_edm": SimpleEDM(), "euler_fm": EulerFM(),
                                                   "identity": Identity()}


def guided(net: nn.Module, args: tuple, labels: Tensor | None, scale: float) -> Tensor:
    """net(*args, labels); with scale != 1, classifier-free guidance G(null) + scale (G(labels) - G(null))."""
    if labels is None:
        return net(*args)
    g = net(*args, labels)
    if scale == 1.0:
        return g
    g_null = net(*args, torch.full_like(labels, net.num_classes))
    return g_null + scale * (g - g_null)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper, or the model itself."""
    return getattr(model, "module", model)


class OneStepModel(nn.Module):
    def __init__(
        self,
        net: nn.Module,
        traj: Trajectory,
        parameterization: str = "simple_edm",
        sigma_d: float = 0.5,
        s_embedding: str = "identity",
    ):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {list(PARAMETERIZATIONS)}")
        if s_embedding not in S_EMBEDDINGS:
            raise ValueError(f"unknown s_embedding {s_embedding!r}; choose one of {S_EMBEDDINGS}")
        self.net, self.traj = net, traj
        self.parameterization, self.s_embedding = parameterization, s_embedding
        self.register_buffer("sigma_d", torch.tensor(float(sigma_d)))

    def network_output(self, x_t: Tensor, s: Tensor, t: Tensor, labels: Tensor | None = None,
                       cfg_scale: float = 1.0) -> Tensor:
        """G(c_in x_t, k t, k s or k (t - s)[, labels]) with k = time_input_scale(), guided when cfg_scale != 1.

        The network runs in its own dtype: a sampler's float64 state and times are cast to it on the way in (c_in and
        the time inputs computed after the cast, as the official sampler does) and its output back to x_t's dtype."""
        dtype = next(self.net.parameters()).dtype
        x, s, t = x_t.to(dtype), s.to(dtype), t.to(dtype)
        a, sg = self.traj.alpha(t), self.traj.sigma(t)
        c_in = 1 / (self.sigma_d * torch.sqrt(a**2 + sg**2))
        k = self.time_input_scale()
        c_s = k * s if self.s_embedding == "identity" else k * (t - s)
        return guided(self.net, (bcast(c_in, x) * x, k * t, c_s), labels, cfg_scale).to(x_t.dtype)

    def time_input_scale(self) -> float | Tensor:
        """k in the network's time inputs k t and k s (or k (t - s)): EDM's and the paper's c_noise = 1000 t."""
        return EDM_TIME_SCALE

    def forward(self, x_t: Tensor, s: Tensor, t: Tensor, labels: Tensor | None = None, cfg_scale: float = 1.0) -> Tensor:
        """f_{s,t}(x_t): x_t moved from time t to time s <= t (guidance acts on G, before the skip/output mix)."""
        return self.combine(x_t, self.network_output(x_t, s, t, labels, cfg_scale), s, t)

    def combine(self, x_t: Tensor, g: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """The parameterisation's skip/output mix of x_t and the network output g (guidance acts on g)."""
        return PARAMETERIZATIONS[self.parameterization].combine(self.traj, x_t, g, s, t, self.sigma_d)

    def c_out(self, s: Tensor, t: Tensor) -> Tensor:
        """df/dG of this parameterisation; 0 at s = t for all three."""
        return PARAMETERIZATIONS[self.parameterization].c_out(self.traj, s, t, self.sigma_d)

    def kernel_scale(self, s: Tensor, t: Tensor) -> Tensor:
        """w~(s, t) = 1 / |c_out(s, t)|, finite everywhere: |c_out| is floored at MIN_C_OUT, which only a forced
        s = t reaches (the time samplers keep t - s >= MIN_GAP). There c_out = 0 makes G's gradient exactly 0."""
        return 1 / self.c_out(s, t).abs().clamp_min(MIN_C_OUT)


class VelocityModel(OneStepModel):
    """Flow matching's v(x_t, t) = sigma_d G(c_in x_t, t, s = t): the euler_fm model's velocity as s -> t,
    so f_{s,t} = x_t - (t - s) v is one Euler step. `forward` is the velocity, so DDP wraps it as is."""

    def __init__(self, net: nn.Module, traj: Trajectory, sigma_d: float = 0.5, s_embedding: str = "identity"):
        super().__init__(net, traj, "euler_fm", sigma_d, s_embedding)

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None, cfg_scale: float = 1.0) -> Tensor:
        return self.sigma_d * self.network_output(x_t, t, t, labels, cfg_scale)
