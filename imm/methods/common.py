"""What the continuous-time methods share: the network G and flow matching's path."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from imm.checks import ConfigError
from imm.networks import ARCHITECTURES


def build_network(cfg: DictConfig, data_shape: tuple[int, ...], num_classes: int = 0) -> nn.Module:
    """G_theta: the registered architecture model.arch names (imm/networks/), built from the model section."""
    arch = ARCHITECTURES[cfg.model.arch]
    if arch.images and (len(data_shape) != 3 or data_shape[1] != data_shape[2]):
        raise ConfigError(f"model.arch: {arch.name} needs square images (C, H, H), this data has shape {data_shape}")
    return arch.build(cfg.model, tuple(data_shape), num_classes)


def check_ot_fm(cfg: DictConfig) -> None:
    """The methods built on flow matching's path z_t = (1 - t) x + t eps run only on that trajectory."""
    if cfg.trajectory != "ot_fm":
        raise ConfigError(f"trajectory: method={cfg.method} uses flow matching's path 'ot_fm', got {cfg.trajectory!r}")


def ot_fm_point(x: Tensor, t: Tensor, sigma_d: Tensor) -> tuple[Tensor, Tensor]:
    """(x_t, v) on flow matching's path: x_t = (1 - t) x + t eps and its velocity v = eps - x, eps ~ N(0, sigma_d^2)."""
    eps = torch.randn_like(x) * sigma_d
    tb = t.reshape(-1, *([1] * (x.ndim - 1)))
    return (1 - tb) * x + tb * eps, eps - x
