"""The IMM objective (paper eq. 8, simplified as in section 4.1 and appendix C.4 eq. 67).

Per group of M particles sharing (s, r, t):
    x_t = alpha_t x + sigma_t eps,  x_r = DDIM(x_t, x, r, t)          (no new noise)
    y_t = f_{s,t}(x_t)   online, with gradient
    y_r = f_{s,r}(x_r)   target: the current weights under stop-gradient, same dropout randomness
    L   = mean over groups of  w(s, t) * MMD^2(y_t, y_r)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from imm.kernels import get_kernel
from imm.losses import at_least_fp32, mmd2
from imm.mapping import mapping_fn
from imm.networks.precond import OneStepModel, unwrap
from imm.trajectories import Trajectory, ddim
from imm.weighting import Weighting, sample_times


@contextmanager
def replay_rng(device: torch.device):
    """Run a block, then rewind the device's RNG so the next block draws the same dropout masks."""
    cuda = device.type == "cuda"
    state = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()
    try:
        yield
    finally:
        torch.cuda.set_rng_state(state, device) if cuda else torch.set_rng_state(state)


@dataclass
class IMMBatch:
    """One draw of the objective's randomness: group times (G,), particle times (B,), x_t and x_r."""

    s: Tensor
    r: Tensor
    t: Tensor
    x_t: Tensor
    x_r: Tensor
    labels: Tensor | None = None  # (B,) class labels, the same for both inputs


@dataclass
class IMMLoss:
    traj: Trajectory
    group_size: int = 4
    kernel: str = "laplace"
    mapping: str = "constant_eta"
    k: int = 15
    weighting: Weighting = Weighting()
    unbiased: bool = False
    eps_t: float = 0.0
    T: float = 0.994
    time_sampler: str = "uniform"
    p_mean: float = -0.4
    p_std: float = 2.0
    eta_max: float = 160.0
    eta_min: float = 0.0
    delta: float = 0.0
    s_at_eps: bool = False  # the consistency-model case: every group maps to s = eps_t

    def __post_init__(self):
        self.kernel_fn = get_kernel(self.kernel)

    def draw(self, x: Tensor, sigma_d: Tensor, labels: Tensor | None = None,
             times: tuple[Tensor, Tensor] | None = None) -> IMMBatch:
        """Times (one (s, r, t) per group, or the given (s, t)), noise and the two noisy inputs for a batch of data x."""
        groups = x.shape[0] // self.group_size
        s, t = times if times is not None else sample_times(
            groups, self.traj, self.eps_t, self.T, self.time_sampler,
            p_mean=self.p_mean, p_std=self.p_std, device=x.device,
        )
        if self.s_at_eps:
            s = torch.full_like(s, self.eps_t)
        r = mapping_fn(
            s, t, self.traj, self.mapping, self.k,
            eta_max=self.eta_max, eta_min=self.eta_min, eps_t=self.eps_t, T=self.T, delta=self.delta,
        )
        s_, r_, t_ = (v.repeat_interleave(self.group_size) for v in (s, r, t))
        shape = (-1,) + (1,) * (x.ndim - 1)
        eps = torch.randn_like(x) * sigma_d
        x_t = self.traj.alpha(t_).view(shape) * x + self.traj.sigma(t_).view(shape) * eps
        x_r = ddim(x_t, x, r_.view(shape), t_.view(shape), self.traj)
        return IMMBatch(s=s, r=r, t=t, x_t=x_t, x_r=x_r, labels=labels)

    def per_group(self, model: OneStepModel, batch: IMMBatch) -> Tensor:
        """MMD^2(y_t, y_r) of each group, unweighted: (G,)."""
        m = self.group_size
        s_, r_, t_ = (v.repeat_interleave(m) for v in (batch.s, batch.r, batch.t))
        with replay_rng(batch.x_t.device), torch.no_grad():
            y_r = at_least_fp32(model(batch.x_r, s_, r_, batch.labels))
        y_t = at_least_fp32(model(batch.x_t, s_, t_, batch.labels))  # kernel sums in >= fp32
        groups = batch.s.shape[0]
        return mmd2(
            y_t.reshape(groups, m, -1), y_r.reshape(groups, m, -1),
            self.kernel_fn, unwrap(model).kernel_scale(batch.s, batch.t), self.unbiased,
        )

    def objective(self, model: OneStepModel, batch: IMMBatch) -> Tensor:
        return (self.weighting(batch.t, self.traj) * self.per_group(model, batch)).mean()

    def __call__(self, model: OneStepModel, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.objective(model, self.draw(x, unwrap(model).sigma_d, labels))
