"""Shortcut models (Frans et al. 2024): a velocity conditioned on its step, u(x_t, t - D, t), so that one step
x_{t-D} = x_t - D u(x_t, t - D, t) may be large. Flow matching trains the smallest step (D = 0, u = v = eps - x);
a share `shortcut.self_consistency` of the batch trains a big step D = T / 2^k (k < `shortcut.levels`) on two
half steps of the model itself, under stop-gradient:

    d = D / 2,   v1 = u(x_t, t - d, t),   v2 = u(x_t - d v1, t - D, t - d),   u(x_t, t - D, t) <- (v1 + v2) / 2

The recursion ends on a trained step: the finest big step's half steps (D / 2 below T / 2^(levels - 1)) are taken
with the D = 0 velocity that flow matching trains, and so are sampling steps finer than it (128 steps with the
default 7 levels), so the model is never asked for a step size that no loss trains.

On the path and network of MeanFlow (imm.methods.meanflow): u = sigma_d G(c_in x_t, c_noise(t), c_noise(t - D)),
sampled with 1, 2, 4, ... equal steps (`mean_steps` on the uniform grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor

from imm.checks import check_range
from imm.maths.estimators import at_least_fp32
from imm.methods.common import check_ot_fm, ot_fm_point
from imm.methods.imm import replay_rng
from imm.methods.meanflow import build_model as meanflow_model
from imm.methods.meanflow import instantaneous_velocity
from imm.methods.registry import Method, register, resolved_T
from imm.networks.precond import EDM_TIME_SCALE, bcast, unwrap


@dataclass
class ShortcutConfig:
    self_consistency: float = 0.25  # share of the batch on the self-consistency target (the paper's 1/4)
    levels: int = 7  # big steps D = T / 2^k for k = 0 .. levels - 1 (the paper: 1 down to 1/128)


class ShortcutLoss:
    """The shortcut objective, built from the `shortcut` section (a ShortcutConfig, or a run config's cfg.shortcut)."""

    def __init__(self, c: ShortcutConfig, *, T: float):
        self.c, self.T = c, T

    @property
    def finest(self) -> float:
        """The smallest big step trained, T / 2^(levels - 1); below it only D = 0 is."""
        return self.T / 2.0 ** (self.c.levels - 1)

    def target(self, model, x_t: Tensor, s: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """(v1 + v2) / 2: the velocity of the step t -> s made of two half steps of the model, each conditioned on
        its own step if that is trained, else on D = 0 (a half step of the finest big step)."""
        mid = (t + s) / 2
        trained = trained_step(self.finest)
        v1 = trained(model, x_t, mid, t, labels)
        v2 = trained(model, x_t - bcast(t - mid, x_t) * v1, s, mid, labels)
        return (v1 + v2) / 2

    def __call__(self, model, x: Tensor, labels: Tensor | None = None) -> Tensor:
        m, n, device = unwrap(model), x.shape[0], x.device
        sc = torch.rand(n, device=device) < self.c.self_consistency
        big = self.T / 2.0 ** torch.randint(self.c.levels, (n,), device=device)
        step = torch.where(sc, big, torch.zeros_like(big))
        t = step + (self.T - step) * torch.rand(n, device=device)
        s = t - step
        x_t, target = ot_fm_point(x, t, m.sigma_d)
        with replay_rng(device), torch.no_grad():  # the online pass sees the target passes' dropout masks
            if bool(sc.any()):
                i = sc.nonzero().squeeze(1)
                lab = labels[i] if labels is not None else None
                target = target.index_put((i,), self.target(m, x_t[i], s[i], t[i], lab).to(target.dtype))
        return (at_least_fp32(model(x_t, s, t, labels)) - at_least_fp32(target)).square().mean()


def trained_step(finest: float):
    """u(x, r, t) with the step condition D = t - r snapped to 0 where it is nearer half the finest trained big step
    than the finest itself (D < 3/4 finest): half steps of the finest, and sampling grids finer than it, take the
    D = 0 velocity; a grid step of about the finest (float32 times, eps_t > 0 shorten it slightly) keeps its own."""
    def u(model, x: Tensor, r: Tensor, t: Tensor, *rest) -> Tensor:
        return model(x, torch.where(t - r < 0.75 * finest, t, r), t, *rest)
    return u


def check_section(cfg: DictConfig) -> None:
    check_range(cfg, "shortcut.self_consistency", 0.0, 1.0)
    check_range(cfg, "shortcut.levels", 1, 20)


def build_model(cfg: DictConfig, data_shape: tuple[int, ...], sigma_d: float, num_classes: int = 0):
    """MeanFlow's network on EDM's 1000 t, the scale shortcut models were tuned with (on digits, 1-step energy 0.014;
    with MeanFlow's unscaled t, 0.031)."""
    return meanflow_model(cfg, data_shape, sigma_d, num_classes, time_scale=EDM_TIME_SCALE)


METHOD = register(Method(
    "shortcut", "shortcut model: a step-conditioned velocity, big steps trained on two half steps of its own",
    model_kind="average_velocity", build_model=build_model,
    sampler_options=lambda cfg, sampler: {"finest": resolved_T(cfg) / 2.0 ** (cfg.shortcut.levels - 1)},
    build_loss=lambda cfg: ShortcutLoss(cfg.shortcut, T=resolved_T(cfg)),
    section="shortcut", config=ShortcutConfig, check_section=check_section,
    check_run=check_ot_fm, velocity=instantaneous_velocity,
))
