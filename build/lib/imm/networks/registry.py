"""The architecture record and the table `model.arch=NAME` looks up: a network is one module under imm/networks/
that calls `register(Architecture(...))`, as a method is one module under imm/methods/. The config's allowed values,
the image check and the GPU layout read this table, so nothing else changes when a network is added."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig
from torch import nn

# build(model_section, data_shape, num_classes) -> G_theta(x, c_noise_t, c_noise_s[, labels])
Build = Callable[[DictConfig, tuple[int, ...], int], nn.Module]


@dataclass(frozen=True)
class Architecture:
    name: str
    summary: str  # one line for the docs
    build: Build
    images: bool = True  # needs square images (C, H, H); False: any data, flattened inside
    channels_last: bool = True  # trains in channels-last layout on CUDA (train.channels_last): convolutions
    # Its own settings, as a dataclass: the config section model.<name> (the built-in networks predate this and read
    # the flat model.* keys).
    config: type | None = None


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add (or replace) a network in the table; returns it, so a module can write ARCH = register(Architecture(...))."""
    ARCHITECTURES[arch.name] = arch
    return arch
