"""The method record and the table `method=NAME` looks up: a method is one module under imm/methods/ that calls
`register(Method(...))`; the config's allowed methods, the CLI's help and the sweep validation read this table, so
nothing else changes when a method is added. Its samplers are those registered (imm.sampling) for its model kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from imm.maths.trajectories import TRAJECTORIES

# What a trained model computes, which says which samplers step it (imm.sampling registers them by kind).
MODEL_KINDS = ("one_step_map", "velocity", "noise_prediction", "average_velocity", "decoder")
# start(model, cfg, n, steps, data_shape, generator) -> (x_start, grid): the sampler's first input and its grid
Start = Callable[[nn.Module, DictConfig, int, int, tuple[int, ...], torch.Generator], tuple[Tensor, Any]]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for --help and the docs
    model_kind: str  # one of MODEL_KINDS: its samplers are the ones registered for that kind
    build_model: Callable[[DictConfig, tuple[int, ...], float, int], nn.Module]  # (cfg, data_shape, sigma_d, classes)
    build_loss: Callable[[DictConfig], Callable[..., Tensor]]  # loss(model, x, labels) -> scalar
    # None: x_T = sigma_d eps on the configured time grid (imm.sampling.generate.start_from_noise)
    start: Start | None = None
    section: str | None = None  # the config section it owns (cfg.<section>), if any
    config: type | None = None  # that section's dataclass
    default_sampler: str | None = None  # None: the first sampler registered for its kind
    # its own keys for its default sampler and schedule (imm.sampler, imm.schedule), which sample.sampler and
    # sample.schedule override; None: the default above and the uniform schedule
    sampler_key: str | None = None
    schedule_key: str | None = None
    sampler_options: Callable[[DictConfig, str], dict[str, Any]] = field(default=lambda cfg, sampler: {})
    check_section: Callable[[DictConfig], None] | None = None  # its section's values (checked whatever method runs)
    check_run: Callable[[DictConfig], None] | None = None  # the rest of a config it cannot run with (when it runs)
    # a trained model's instantaneous velocity v(z, t) (model, z, t, labels) -> Tensor: what makes it a teacher
    velocity: Callable[..., Tensor] | None = None
    distills: bool = False  # its loss takes train.teacher's velocity in place of the data's eps - x
    needs_teacher: bool = False  # it trains only from a teacher
    # Its authors' time conventions, used where the config leaves them null. default_T: the largest time it trains
    # and samples from (None: the trajectory's, 0.994 on ot_fm, which IMM's eta = sigma / alpha needs; 1.0: from
    # pure noise, which also lets T = 1 be set). s_embedding: how the network sees its second time (identity: s;
    # stride: t - s).
    default_T: float | None = None
    s_embedding: str = "identity"


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add (or replace) a method in the table; returns it, so a module can write METHOD = register(Method(...))."""
    METHODS[method.name] = method
    return method


def resolved_T(cfg: DictConfig) -> float:
    """The largest time: T, else the method's own, else the trajectory's default."""
    if cfg.T is not None:
        return cfg.T
    default_T = METHODS[cfg.method].default_T
    return default_T if default_T is not None else TRAJECTORIES[cfg.trajectory].default_T


def resolved_s_embedding(cfg: DictConfig) -> str:
    """How the network sees its second time: model.s_embedding, else the method's own."""
    return cfg.model.s_embedding or METHODS[cfg.method].s_embedding


def pinned(cfg: DictConfig) -> DictConfig:
    """`cfg` with T and model.s_embedding set to what they resolve to: what a checkpoint stores, so that a trained
    model keeps its times when a method's defaults change."""
    out = cfg.copy()
    out.T, out.model.s_embedding = resolved_T(cfg), resolved_s_embedding(cfg)
    return out
