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
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from imm.checks import ConfigError, check_choice, check_range, planned_precision
from imm.maths.estimators import ESTIMATORS, at_least_fp32, mmd2
from imm.maths.kernels import KERNELS, get_kernel
from imm.maths.mapping import MAPPINGS, mapping_fn
from imm.maths.trajectories import Trajectory, ddim, get_trajectory
from imm.maths.weighting import TIME_SAMPLERS, WEIGHTINGS, Weighting, sample_times
from imm.methods.common import build_network
from imm.methods.registry import Method, register, resolved_s_embedding, resolved_T
from imm.networks.precond import OneStepModel, unwrap


@dataclass
class IMMConfig:
    group_size: int = 4  # M
    kernel: str = "laplace"  # the MMD kernel: laplace (the paper's), rbf or energy, scaled by 1 / |c_out(s, t)|
    mapping: str = "constant_eta"  # r(s, t): constant_eta (a decrement in eta = sigma / alpha, the paper's) or constant_t
    k: int = 12  # mapping decrement 2^-k
    eta_max: float = 160.0  # constant_eta: r's decrement in eta is (eta_max - eta_min) / 2^k
    eta_min: float = 0.0  # constant_eta: see eta_max
    # Low-precision floor on t - r (paper section 4: 1e-4). null: BF16_DELTA where the run trains in bf16, else 0.
    delta: float | None = None
    weighting: str = "sigmoid"  # w(s, t) of the paper's eq. 13: sigmoid, or constant (1)
    a: float = 1.0  # sigmoid weighting: the exponent of the alpha factor
    b: float = 5.0  # sigmoid weighting: the shift of the sigmoid in log-SNR
    weight_elbo: bool = True  # the factors of the sigmoid weighting, switchable one by one
    weight_alpha: bool = True  # the alpha_t^a factor of the sigmoid weighting
    weight_norm: bool = True  # the 1 / (alpha_t^2 + sigma_t^2) normalisation of the sigmoid weighting
    estimator: str = "v"  # v: the paper's V-statistic; u: unbiased U-statistic
    time_sampler: str = "uniform"  # p(t): uniform on [eps_t, T], or lognormal in eta (p_mean, p_std)
    # How IMM samples unless sample.sampler / sample.schedule say otherwise: the paper's pushforward on a uniform
    # grid, or restart, which re-noises between steps and so does not carry each step's error to the end.
    sampler: str = "pushforward"
    schedule: str = "uniform"  # the grid IMM samples on: uniform in t, eta (EDM's), or half_eta (imm.sampling.schedules)
    p_mean: float = -0.4  # lognormal time sampler: log eta ~ N(p_mean, p_std^2)
    p_std: float = 2.0  # lognormal time sampler: the std of log eta


# The floor on t - r that bf16 training needs. Near T the paper's decrement moves t by ~2e-7 (k = 15), which the
# network's output cannot resolve in low precision: G(x_t, s, r) - G(x_t, s, t) is drowned by rounding. Measured on
# the paper's networks at t = 0.99 (tests/test_bf16_times.py, relative error of that difference against fp32):
# fp16 autocast needs the paper's 1e-4 (error 0.4 on DDPM++, 0.17 on DiT; 67 and 3.4 without it), bf16, whose
# mantissa is 8x coarser, needs 1e-3 (0.35 and 0.15; at 1e-4 still 3.0 and 1.2).
BF16_DELTA = 1e-3


def resolved_delta(cfg: DictConfig) -> float:
    """imm.delta, or its default for the run's precision; a floor below what bf16 needs is refused."""
    bf16 = planned_precision(cfg) == "bf16"
    delta = cfg.imm.delta
    if delta is None:
        return BF16_DELTA if bf16 else 0.0
    if bf16 and delta < BF16_DELTA:
        raise ConfigError(f"imm.delta: {delta} is below the floor bf16 training needs (allowed in bf16: >= {BF16_DELTA}, "
                          "or null for that floor; smaller steps need train.precision=fp32)")
    return delta


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


class IMMLoss:
    """IMM's objective, built from the `imm` section (an IMMConfig, or a run config's cfg.imm) and the run's times:
    eps_t, T and the low-precision floor delta as resolved for the run (resolved_delta). s_at_eps: the
    consistency-model case, every group mapped to s = eps_t."""

    def __init__(self, traj: Trajectory, c: IMMConfig, *, eps_t: float, T: float, delta: float = 0.0,
                 s_at_eps: bool = False):
        self.traj, self.c, self.eps_t, self.T, self.delta, self.s_at_eps = traj, c, eps_t, T, delta, s_at_eps
        self.group_size = c.group_size
        self.kernel_fn = get_kernel(c.kernel)
        self.weighting = Weighting(c.weighting, c.a, c.b, c.weight_elbo, c.weight_alpha, c.weight_norm)
        self.unbiased = c.estimator == "u"

    def times(self, groups: int, device=None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(s, t) for each group from imm.time_sampler (s = eps_t throughout in the consistency-model case)."""
        s, t = sample_times(groups, self.traj, self.eps_t, self.T, self.c.time_sampler, p_mean=self.c.p_mean,
                            p_std=self.c.p_std, generator=generator, device=device)
        return (torch.full_like(s, self.eps_t), t) if self.s_at_eps else (s, t)

    def mapping(self, s: Tensor, t: Tensor) -> Tensor:
        """r(s, t) from imm.mapping, imm.k and the run's floor delta."""
        return mapping_fn(s, t, self.traj, self.c.mapping, self.c.k, eta_max=self.c.eta_max, eta_min=self.c.eta_min,
                          eps_t=self.eps_t, T=self.T, delta=self.delta)

    def draw(self, x: Tensor, sigma_d: Tensor, labels: Tensor | None = None,
             times: tuple[Tensor, Tensor] | None = None) -> IMMBatch:
        """Times (one (s, r, t) per group, or the given (s, t)), noise and the two noisy inputs for a batch of data x."""
        s, t = times if times is not None else self.times(x.shape[0] // self.group_size, x.device)
        r = self.mapping(s, t)
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


def build_model(cfg: DictConfig, data_shape: tuple[int, ...], sigma_d: float, num_classes: int = 0) -> OneStepModel:
    """f_{s,t} = the parameterisation's mix of x_t and the shared network G (also the consistency model's)."""
    return OneStepModel(build_network(cfg, data_shape, num_classes), get_trajectory(cfg.trajectory),
                        cfg.model.parameterization, sigma_d=sigma_d, s_embedding=resolved_s_embedding(cfg))


def build_loss(cfg: DictConfig, consistency: bool = False) -> IMMLoss:
    """IMM's loss from the `imm` section; `consistency`: the CM case (M = 1, energy kernel, s = eps_t)."""
    c = OmegaConf.merge(cfg.imm, {"group_size": 1, "kernel": "energy"}) if consistency else cfg.imm
    return IMMLoss(get_trajectory(cfg.trajectory), c, eps_t=cfg.eps_t, T=resolved_T(cfg), delta=resolved_delta(cfg),
                   s_at_eps=consistency)


def check_section(cfg: DictConfig) -> None:
    for key, allowed in (("imm.kernel", KERNELS), ("imm.mapping", MAPPINGS), ("imm.weighting", WEIGHTINGS),
                         ("imm.estimator", ESTIMATORS), ("imm.time_sampler", TIME_SAMPLERS)):
        check_choice(cfg, key, allowed)
    check_range(cfg, "imm.k", 1, 20)
    check_range(cfg, "imm.group_size", 1, None)
    if cfg.imm.delta is not None:
        check_range(cfg, "imm.delta", 0.0, None)


def check_run(cfg: DictConfig) -> None:
    m, b, w, acc = cfg.imm.group_size, cfg.train.batch_size, cfg.trainer.num_workers, cfg.train.accumulate
    if (b // w) % m:
        raise ConfigError(f"imm.group_size: M={m} must divide the per-worker batch "
                          f"train.batch_size / trainer.num_workers = {b}/{w} = {b // w}")
    if (b // w // acc) % m:
        raise ConfigError(f"imm.group_size, train.accumulate: M={m} must divide each micro-batch (per-worker batch "
                          f"{b // w} / train.accumulate {acc} = {b // w // acc}), so that groups stay whole")
    resolved_delta(cfg)  # a floor too small for the run's precision, before anything starts
    if cfg.imm.estimator == "u" and m < 2:
        raise ConfigError("imm.estimator: 'u' needs imm.group_size >= 2 (it drops the self-pairs)")


METHOD = register(Method(
    "imm", "IMM (the paper): f_{s,t} trained by inductive moment matching",
    model_kind="one_step_map", build_model=build_model, build_loss=build_loss, section="imm", config=IMMConfig,
    sampler_key="imm.sampler", schedule_key="imm.schedule", check_section=check_section, check_run=check_run,
))
