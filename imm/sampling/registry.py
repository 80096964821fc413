"""The sampler and schedule records and the tables `sample.sampler=NAME` and `sample.schedule=NAME` look up. A
sampler is one function registered for the kind of model it steps (a method's `model_kind`), so a new sampler for
IMM and the consistency model is one module; a schedule is one function from (steps, trajectory, eps_t, T) to a time
grid. The config's allowed values read these tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from imm.methods.registry import METHODS


@dataclass(frozen=True)
class Sampler:
    name: str
    kind: str  # the model kind it steps (imm.methods.registry.MODEL_KINDS)
    summary: str  # one line for the docs
    # fn(model, x_start, grid, generator, **the method's sampler_options) -> samples
    fn: Callable[..., Tensor]


@dataclass(frozen=True)
class Schedule:
    name: str
    summary: str
    # grid(steps, traj, eps_t, T, rho) -> steps + 1 decreasing float64 times from T to eps_t
    grid: Callable[..., Tensor]


SAMPLERS: dict[tuple[str, str], Sampler] = {}  # by (kind, name): two kinds may each have a sampler of one name
SCHEDULES: dict[str, Schedule] = {}


def register_sampler(sampler: Sampler) -> Sampler:
    SAMPLERS[(sampler.kind, sampler.name)] = sampler
    return sampler


def register_schedule(schedule: Schedule) -> Schedule:
    SCHEDULES[schedule.name] = schedule
    return schedule


def samplers_for(method: str) -> tuple[str, ...]:
    """The names of the samplers that step `method`'s model kind, in registration order."""
    kind = METHODS[method].model_kind
    return tuple(name for k, name in SAMPLERS if k == kind)


def sampler_named(method: str, name: str) -> Sampler:
    return SAMPLERS[(METHODS[method].model_kind, name)]
