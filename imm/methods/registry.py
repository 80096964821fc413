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


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add (or replace) a method in the table; returns it, so a module can write METHOD = register(Method(...))."""
    METHODS[method.name] = method
    return method
