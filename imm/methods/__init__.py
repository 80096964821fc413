"""Each method is a model, a loss and its samplers behind one interface, selected by `method=`:

    imm   IMM (the paper)                          samplers: pushforward, restart
    cm    consistency model: IMM with M = 1, the energy kernel and s = eps_t (the paper's CM lemma)
                                                    samplers: restart (multistep CM sampling), pushforward
    fm    flow matching                            samplers: euler, heun
    ddpm  DDPM, epsilon prediction, L_simple       samplers: ancestral, ddim (sample.eta)
    vae   Gaussian VAE                             sampler: decode (one step)

Every loss is called as loss(model, x, labels=None); every sampler as sampler(model, x_start, grid, generator).
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from imm.config import ConfigError, resolved_T
from imm.methods.ddpm import DDPMLoss, EpsModel, ancestral, ddim, linear_alpha_bars, timestep_grid
from imm.methods.flow_matching import FlowMatchingLoss
from imm.methods.imm import IMMLoss
from imm.methods.vae import VAE, VAELoss, decode
from imm.networks import MLP, OneStepModel, UNet, VelocityModel
from imm.sampling import SAMPLERS, initial_noise, time_grid
from imm.trajectories import get_trajectory
from imm.weighting import Weighting

# A consistency model only learns maps to s = eps_t, so its multistep sampler is restart (the usual CM sampler).
DEFAULT_SAMPLER = {"imm": "pushforward", "cm": "restart", "fm": "euler", "ddpm": "ancestral", "vae": "decode"}
SAMPLER_FNS = {**SAMPLERS, "ancestral": ancestral, "ddim": ddim, "decode": decode}


def sampler_of(cfg: DictConfig) -> str:
    """The sampler a config samples with: sample.sampler, else the method's own choice."""
    return cfg.sample.sampler or (cfg.imm.sampler if cfg.method == "imm" else DEFAULT_SAMPLER[cfg.method])


def schedule_of(cfg: DictConfig) -> str:
    """The time grid a config samples on: sample.schedule, else the method's own (imm.schedule for IMM)."""
    return cfg.sample.schedule or (cfg.imm.schedule if cfg.method == "imm" else "uniform")


def build_network(cfg: DictConfig, data_shape: tuple[int, ...], num_classes: int = 0) -> nn.Module:
    """G_theta: the MLP (any data, flattened) or the U-Net (images)."""
    m = cfg.model
    if m.arch == "unet":
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ConfigError(f"model.arch: unet needs square images (C, H, H), this data has shape {data_shape}")
        return UNet(data_shape[0], data_shape[1], model_channels=m.channels, channel_mult=tuple(m.channel_mult),
                    num_blocks=m.num_blocks, attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                    emb_dim=m.emb_dim, num_classes=num_classes)
    return MLP(math.prod(data_shape), hidden=m.hidden, depth=m.depth, emb_dim=m.emb_dim, dropout=m.dropout,
               num_classes=num_classes)


def build_model(cfg: DictConfig, data_shape: tuple[int, ...], sigma_d: float, num_classes: int = 0) -> nn.Module:
    """The trained module of `cfg.method`; `num_classes` > 0 adds a label embedding (with a null label)."""
    m = cfg.model
    if cfg.method == "vae":
        return VAE(data_shape, latent_dim=cfg.vae.latent_dim, hidden=m.hidden, depth=m.depth, sigma_d=sigma_d)
    net = build_network(cfg, data_shape, num_classes)
    if cfg.method == "ddpm":
        return EpsModel(net, linear_alpha_bars(cfg.ddpm.steps, cfg.ddpm.beta_start, cfg.ddpm.beta_end), sigma_d,
                        clip_x0=cfg.ddpm.clip_x0)
    traj = get_trajectory(cfg.trajectory)
    if cfg.method == "fm":
        return VelocityModel(net, traj, sigma_d=sigma_d, s_embedding=m.s_embedding)
    return OneStepModel(net, traj, m.parameterization, sigma_d=sigma_d, s_embedding=m.s_embedding)


def build_loss(cfg: DictConfig):
    T = resolved_T(cfg)
    if cfg.method == "fm":
        return FlowMatchingLoss(eps_t=cfg.eps_t, T=T)
    if cfg.method == "ddpm":
        return DDPMLoss()
    if cfg.method == "vae":
        return VAELoss()
    c, cm = cfg.imm, cfg.method == "cm"
    return IMMLoss(
        get_trajectory(cfg.trajectory),
        group_size=1 if cm else c.group_size, kernel="energy" if cm else c.kernel, mapping=c.mapping, k=c.k,
        weighting=Weighting(c.weighting, c.a, c.b, c.weight_elbo, c.weight_alpha, c.weight_norm),
        unbiased=c.estimator == "u", eps_t=cfg.eps_t, T=T, time_sampler=c.time_sampler,
        p_mean=c.p_mean, p_std=c.p_std, eta_max=c.eta_max, eta_min=c.eta_min, delta=c.delta, s_at_eps=cm,
    )


class Conditioned:
    """A model with its class labels and guidance scale fixed, for samplers that call model(x, *times)."""

    def __init__(self, model: nn.Module, labels: Tensor, cfg_scale: float):
        self.model, self.labels, self.cfg_scale = model, labels, cfg_scale

    def __call__(self, x: Tensor, *times: Tensor) -> Tensor:
        return self.model(x, *times, labels=self.labels, cfg_scale=self.cfg_scale)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def num_classes_of(model: nn.Module) -> int:
    return int(getattr(getattr(model, "net", None), "num_classes", 0))


@torch.no_grad()
def generate(
    model: nn.Module,
    cfg: DictConfig,
    n: int,
    steps: int,
    *,
    sampler: str | None = None,
    seed: int = 0,
    data_shape: tuple[int, ...],
    batch_size: int = 10000,
    labels: Tensor | None = None,
) -> Tensor:
    """n samples in `steps` steps with the configured (or given) sampler, reproducible from `seed`.

    A class-conditional model gets `labels`, or by default the classes in turn (0, 1, ..., 0, 1, ...), guided
    with `sample.cfg_scale`.
    """
    sampler = sampler or sampler_of(cfg)
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    classes = num_classes_of(model)
    if classes and labels is None:
        labels = torch.arange(n, device=device) % classes
    extra = {"eta": float(cfg.sample.eta)} if sampler == "ddim" else {}
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        if cfg.method == "vae":
            x, grid = torch.randn((b, model.latent_dim), generator=g, device=device), None
        elif cfg.method == "ddpm":
            x, grid = torch.randn((b, *data_shape), generator=g, device=device), timestep_grid(steps, model.num_steps)
        else:
            T = resolved_T(cfg)
            grid = time_grid(steps, model.traj, cfg.eps_t, T, schedule_of(cfg), cfg.sample.times)
            x = initial_noise(b, data_shape, model.sigma_d, model.traj, T, generator=g, device=device)
        fn = model if labels is None else Conditioned(model, labels[start : start + b], float(cfg.sample.cfg_scale))
        out.append(SAMPLER_FNS[sampler](fn, x, grid, generator=g, **extra))
    model.train(was_training)
    return torch.cat(out)
