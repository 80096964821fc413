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

Every loss is called as loss(model, x, labels=None); every sampler as sampler(model, x_start, grid, generator).
"""

from __future__ import annotations

import importlib
import pkgutil

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from imm.methods.registry import METHODS, Method, register, sampler_of, schedule_of

# The built-in methods in the order errors and help list them, then any other module in this folder.
_BUILTIN = ("imm", "flow_matching", "ddpm", "cm", "vae", "meanflow", "shortcut", "tvm", "fmm")
for _name in (*_BUILTIN, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    if _name not in ("registry", "common"):
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["METHODS", "Method", "build_loss", "build_model", "generate", "num_classes_of", "register", "sampler_of",
           "schedule_of"]


def build_model(cfg: DictConfig, data_shape: tuple[int, ...], sigma_d: float, num_classes: int = 0) -> nn.Module:
    """The trained module of `cfg.method`; `num_classes` > 0 adds a label embedding (with a null label)."""
    return METHODS[cfg.method].build_model(cfg, tuple(data_shape), sigma_d, num_classes)


def build_loss(cfg: DictConfig, teacher=None):
    """The method's loss; `teacher` (imm.training.teacher.Teacher, for the methods that distill) is set on it."""
    loss = METHODS[cfg.method].build_loss(cfg)
    if teacher is not None:
        loss.teacher = teacher
    return loss


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
    method = METHODS[cfg.method]
    sampler = sampler or sampler_of(cfg)
    fn, options = method.samplers[sampler], method.sampler_options(cfg, sampler)
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    classes = num_classes_of(model)
    if classes and labels is None:
        labels = torch.arange(n, device=device) % classes
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x, grid = method.start(model, cfg, b, steps, tuple(data_shape), g)
        net = model if labels is None else Conditioned(model, labels[start : start + b], float(cfg.sample.cfg_scale))
        out.append(fn(net, x, grid, generator=g, **options))
    model.train(was_training)
    return torch.cat(out)
