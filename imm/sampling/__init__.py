"""Sampling: the samplers, one module per model kind, each registering itself (imm.sampling.registry); the time
grids (schedules.py); `generate`, which draws n samples in K steps with a config's sampler (generate.py); samples as
pictures (pictures.py). Every module in this folder that registers a sampler or a schedule is imported here, so
adding one is adding a file:

    maps.py        one-step maps f_{s,t} (imm, cm): pushforward, restart
    velocity.py    a velocity v(x, t) (fm): euler, heun
    denoising.py   a noise prediction (ddpm): ancestral, ddim (sample.eta)
    flow_maps.py   an average velocity u(z, r, t) (meanflow, shortcut, tvm, fmm): mean_steps
    decode.py      a decoder (vae): decode, one step
    schedules.py   the time grids: uniform, eta, half_eta

Every sampler is called as sampler(model, x_start, grid, generator, **the method's sampler_options).
"""

from __future__ import annotations

import importlib
import pkgutil

from imm.sampling.generate import Conditioned, generate, initial_noise, num_classes_of, sampler_of, schedule_of
from imm.sampling.registry import (
    SAMPLERS,
    SCHEDULES,
    Sampler,
    Schedule,
    register_sampler,
    register_schedule,
    sampler_named,
    samplers_for,
)
from imm.sampling.schedules import time_grid

# The built-in samplers in the order each kind lists them (its first is its default), then any other module here.
_BUILTIN = ("schedules", "maps", "velocity", "denoising", "flow_maps", "decode")
for _name in (*_BUILTIN, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    if _name not in ("registry", "generate", "pictures"):
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["SAMPLERS", "SCHEDULES", "Conditioned", "Sampler", "Schedule", "generate", "initial_noise",
           "num_classes_of", "register_sampler", "register_schedule", "sampler_named", "sampler_of", "samplers_for",
           "schedule_of", "time_grid"]
