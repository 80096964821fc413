"""The methods: each is one module here that registers a `Method` record (imm.methods.registry), and `method=NAME`
selects it. Every module in this folder is imported on first use, so adding a method is adding a file:

    imm   IMM (the paper)                          samplers: pushforward, restart (imm.sampler picks)
    cm    consistency model: IMM with M = 1, the energy kernel and s = eps_t (the paper's CM lemma)
                                                    samplers: restart (multistep CM sampling), pushforward
    fm    flow matching                            samplers: euler, heun
    ddpm  DDPM, epsilon prediction, L_simple       samplers: ancestral, ddim (sample.eta)
    vae   Gaussian VAE                             sampler: decode (one step)
    meanflow, shortcut, tvm: flow maps on flow matching's path  sampler: mean_steps
    fmm   flow map matching's distillation of train.teacher (Lagrangian or Eulerian)  sampler: mean_steps

Every loss is called as loss(model, x, labels=None). A method's samplers are those imm.sampling registers for its
model kind; `generate` (imm.sampling) draws samples from a trained one.
"""

from __future__ import annotations

import importlib
import pkgutil

from omegaconf import DictConfig
from torch import nn

from imm.methods.registry import METHODS, MODEL_KINDS, Method, register

# The built-in methods in the order errors and help list them, then any other module in this folder.
_BUILTIN = ("imm", "flow_matching", "ddpm", "cm", "vae", "meanflow", "shortcut", "tvm", "fmm")
for _name in (*_BUILTIN, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    if _name not in ("registry", "common"):
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["METHODS", "MODEL_KINDS", "Method", "build_loss", "build_model", "register"]


def build_model(cfg: DictConfig, data_shape: tuple[int, ...], sigma_d: float, num_classes: int = 0) -> nn.Module:
    """The trained module of `cfg.method`; `num_classes` > 0 adds a label embedding (with a null label)."""
    return METHODS[cfg.method].build_model(cfg, tuple(data_shape), sigma_d, num_classes)


def build_loss(cfg: DictConfig, teacher=None):
    """The method's loss; `teacher` (imm.training.teacher.Teacher, for the methods that distill) is set on it."""
    loss = METHODS[cfg.method].build_loss(cfg)
    if teacher is not None:
        loss.teacher = teacher
    return loss
