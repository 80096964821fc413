"""The method record and the table `method=NAME` looks up: a method is one module under imm/methods/ that calls
`register(Method(...))`; the config's allowed methods and samplers, the CLI's help and the sweep validation read
this table, so nothing else changes when a method is added."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

# sampler(model, x_start, grid, generator, **options) -> samples
Sampler = Callable[..., Tensor]
# start(model, cfg, n, steps, data_shape, generator) -> (x_start, grid): the sampler's first input and its grid
Start = Callable[[nn.Module, DictConfig, int, int, tuple[int, ...], torch.Generator], tuple[Tensor, Any]]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for --help and the docs
    samplers: Mapping[str, Sampler]  # the default first
    build_model: Callable[[DictConfig, tuple[int, ...], float, int], nn.Module]  # (cfg, data_shape, sigma_d, classes)
    build_loss: Callable[[DictConfig], Callable[..., Tensor]]  # loss(model, x, labels) -> scalar
    start: Start
    section: str | None = None  # the config section it owns (cfg.<section>), if any
    config: type | None = None  # that section's dataclass
    default_sampler: Callable[[DictConfig], str] | None = None  # None: the first of `samplers`
    default_schedule: Callable[[DictConfig], str] = field(default=lambda cfg: "uniform")
    sampler_options: Callable[[DictConfig, str], dict[str, Any]] = field(default=lambda cfg, sampler: {})
    check_section: Callable[[DictConfig], None] | None = None  # its section's values (checked whatever method runs)
    check_run: Callable[[DictConfig], None] | None = None  # the rest of a config it cannot run with (when it runs)
    # a trained model's instantaneous velocity v(z, t) (model, z, t, labels) -> Tensor: what makes it a teacher
    velocity: Callable[..., Tensor] | None = None
    distills: bool = False  # its loss takes train.teacher's velocity in place of the data's eps - x
    needs_teacher: bool = False  # it trains only from a teacher


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add (or replace) a method in the table; returns it, so a module can write METHOD = register(Method(...))."""
    METHODS[method.name] = method
    return method


def sampler_of(cfg: DictConfig) -> str:
    """The sampler a config samples with: sample.sampler, else the method's own choice."""
    m = METHODS[cfg.method]
    return cfg.sample.sampler or (m.default_sampler(cfg) if m.default_sampler else next(iter(m.samplers)))


def schedule_of(cfg: DictConfig) -> str:
    """The time grid a config samples on: sample.schedule, else the method's own."""
    return cfg.sample.schedule or METHODS[cfg.method].default_schedule(cfg)
