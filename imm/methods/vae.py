"""A Gaussian VAE (Kingma & Welling 2014; method notes section 10): the one-step baseline.

Encoder q(z | x) = N(mu(x), diag sigma(x)^2), prior N(0, I), decoder p(x | z) = N(dec(z), s^2 I) with one
learned scale s. The loss is the negative ELBO per data dimension:
    [ ||x - dec(z)||^2 / (2 s^2) + D log s + KL(q(z | x) || N(0, I)) ] / D,   z = mu + sigma eps
(the constant D/2 log 2 pi dropped). Sampling is one decoder pass from z ~ N(0, I), returning the mean:
the averaging that blurs VAE samples, which IMM's few steps avoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from imm.checks import ConfigError, check_range
from imm.maths.estimators import at_least_fp32
from imm.methods.registry import Method, register


@dataclass
class VAEConfig:
    latent_dim: int = 16  # the size of the latent code z


def _mlp(d_in: int, hidden: int, depth: int, d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, hidden), nn.SiLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, d_out))


class VAE(nn.Module):
    """MLP encoder and decoder on flattened data of any shape (points or small images)."""

    def __init__(self, data_shape: tuple[int, ...], latent_dim: int = 16, hidden: int = 256, depth: int = 3,
                 sigma_d: float = 1.0):
        super().__init__()
        self.data_shape, self.latent_dim = tuple(data_shape), latent_dim
        d = math.prod(data_shape)
        self.encoder = _mlp(d, hidden, depth, 2 * latent_dim)
        self.decoder = _mlp(latent_dim, hidden, depth, d)
        self.log_scale = nn.Parameter(torch.tensor(math.log(0.5)))  # decoder std in units of sigma_d
        self.register_buffer("sigma_d", torch.tensor(float(sigma_d)))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.encoder(x.flatten(1) / self.sigma_d).chunk(2, dim=-1)
        return mu, log_var.clamp(-12, 8)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).view(-1, *self.data_shape) * self.sigma_d

    def forward(self, x: Tensor) -> Tensor:
        """The negative ELBO per dimension, averaged over the batch (so DDP can wrap the loss as forward)."""
        mu, log_var = self.encode(x)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        d = x[0].numel()
        resid = ((x - self.decode(z)) / self.sigma_d).flatten(1)
        recon = resid.square().sum(1) / (2 * torch.exp(2 * self.log_scale)) + d * self.log_scale
        kl = 0.5 * (mu.square() + log_var.exp() - 1 - log_var).sum(1)
        return ((recon + kl) / d).mean()


@dataclass
class VAELoss:
    def __call__(self, model, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return at_least_fp32(model(x))


def check_run(cfg: DictConfig) -> None:
    if cfg.model.class_conditional:
        raise ConfigError("model.class_conditional: the VAE baseline is unconditional; set it false for method=vae")


METHOD = register(Method(
    "vae", "Gaussian VAE: the one-step baseline",
    model_kind="decoder",
    build_model=lambda cfg, shape, sigma_d, classes=0: VAE(shape, latent_dim=cfg.vae.latent_dim,
                                                          hidden=cfg.model.hidden, depth=cfg.model.depth,
                                                          sigma_d=sigma_d),
    build_loss=lambda cfg: VAELoss(),
    start=lambda model, cfg, n, steps, shape, g: (torch.randn((n, model.latent_dim), generator=g, device=g.device),
                                                  None),
    section="vae", config=VAEConfig, check_section=lambda cfg: check_range(cfg, "vae.latent_dim", 1, None),
    check_run=check_run,
))
