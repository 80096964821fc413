"""DDPM (Ho et al. 2020; method notes section 10): epsilon prediction on a discrete variance-preserving
schedule with the simple loss, sampled ancestrally or with DDIM (Song et al. 2021) on any subsequence.

x_n = sqrt(abar_n) x + sqrt(1 - abar_n) eps for n = 0..N-1, with data scaled to unit std (x / sigma_d) so
one schedule serves toy points and images alike. L_simple = || eps_theta(x_n, n) - eps ||^2.

DDIM from n to m < n (m = -1 is "clean", abar_{-1} = 1):
    x0 = (x_n - sqrt(1 - abar_n) eps) / sqrt(abar_n)
    sigma = eta sqrt((1 - abar_m) / (1 - abar_n)) sqrt(1 - abar_n / abar_m)
    x_m = sqrt(abar_m) x0 + sqrt(1 - abar_m - sigma^2) eps + sigma z
eta = 0 is deterministic; eta = 1 is the DDPM posterior q(x_m | x_n, x0), i.e. ancestral sampling (exactly
DDPM's sampler when the subsequence is every step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from imm.checks import ConfigError, check_range
from imm.maths.estimators import at_least_fp32
from imm.methods.common import build_network
from imm.methods.registry import Method, register
from imm.networks.precond import guided, unwrap


@dataclass
class DDPMConfig:
    steps: int = 1000  # the discrete schedule's length N
    beta_start: float = 1e-4  # the linear beta schedule's first beta
    beta_end: float = 0.02  # its last
    clip_x0: float = 0.0  # > 0: clip the sampler's clean-data prediction to +-clip_x0 (1.0 for images in [-1, 1])


def linear_alpha_bars(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """abar_n = prod_{i <= n} (1 - beta_i) for DDPM's linear betas (float64)."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


class EpsModel(nn.Module):
    """eps_theta(x_n, n) = G(x_n, c_noise = n, c_noise_s = n) on unit-std data; `sigma_d` maps to and from data units.

    `clip_x0` > 0 clips the sampler's clean-data prediction to [-clip_x0, clip_x0] in data units (DDPM's
    `clip_denoised` for images in [-1, 1]): at the first steps x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) amplifies
    the noise predictor's error by 1 / sqrt(abar), up to ~160x on the linear schedule.
    """

    def __init__(self, net: nn.Module, alpha_bars: Tensor, sigma_d: float, clip_x0: float = 0.0):
        super().__init__()
        self.net, self.clip_x0 = net, float(clip_x0)
        self.register_buffer("alpha_bars", alpha_bars.float())
        self.register_buffer("sigma_d", torch.tensor(float(sigma_d)))

    @property
    def num_steps(self) -> int:
        return len(self.alpha_bars)

    def forward(self, x_n: Tensor, n: Tensor, labels: Tensor | None = None, cfg_scale: float = 1.0) -> Tensor:
        c = n.float()
        return guided(self.net, (x_n, c, c), labels, cfg_scale)


@dataclass
class DDPMLoss:
    def __call__(self, model, x: Tensor, labels: Tensor | None = None) -> Tensor:
        m = unwrap(model)
        n = torch.randint(m.num_steps, (x.shape[0],), device=x.device)
        abar = m.alpha_bars[n].view(-1, *([1] * (x.ndim - 1)))
        eps = torch.randn_like(x)
        x_n = abar.sqrt() * (x / m.sigma_d) + (1 - abar).sqrt() * eps
        return (at_least_fp32(model(x_n, n, labels)) - eps).square().mean()


def timestep_grid(steps: int, num_steps: int) -> Tensor:
    """`steps` timesteps from N - 1 down to 0, evenly spaced, then -1 (clean): DDIM's subsequence."""
    if not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be in 1..{num_steps} for this DDPM schedule, got {steps}")
    taus = torch.linspace(num_steps - 1, 0, steps, dtype=torch.float64).round().long()
    return torch.cat([taus, torch.tensor([-1])])


def start(model: EpsModel, cfg: DictConfig, n: int, steps: int, data_shape: tuple[int, ...],
          generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """N(0, I) noise (unit-std units) and DDIM's timestep subsequence."""
    x = torch.randn((n, *data_shape), generator=generator, device=generator.device)
    return x, timestep_grid(steps, model.num_steps)


def check_section(cfg: DictConfig) -> None:
    check_range(cfg, "ddpm.steps", 2, None)
    if not 0 < cfg.ddpm.beta_start < cfg.ddpm.beta_end < 1:
        raise ConfigError(f"ddpm.beta_start, ddpm.beta_end: need 0 < start < end < 1, got {cfg.ddpm.beta_start}, "
                          f"{cfg.ddpm.beta_end}")


def check_run(cfg: DictConfig) -> None:
    if max(cfg.eval.steps) > cfg.ddpm.steps:
        raise ConfigError(f"eval.steps: DDPM samples on a subsequence of its {cfg.ddpm.steps} steps, "
                          f"got {list(cfg.eval.steps)}")


METHOD = register(Method(
    "ddpm", "DDPM: epsilon prediction, L_simple",
    model_kind="noise_prediction",
    build_model=lambda cfg, shape, sigma_d, classes=0: EpsModel(
        build_network(cfg, shape, classes), linear_alpha_bars(cfg.ddpm.steps, cfg.ddpm.beta_start, cfg.ddpm.beta_end),
        sigma_d, clip_x0=cfg.ddpm.clip_x0),
    build_loss=lambda cfg: DDPMLoss(), start=start, section="ddpm", config=DDPMConfig,
    sampler_options=lambda cfg, sampler: {"eta": float(cfg.sample.eta)} if sampler == "ddim" else {},
    check_section=check_section, check_run=check_run,
))
