"""The sampler of a decoder (the VAE baseline): one step, the decoder's mean at z ~ N(0, I)."""

from __future__ import annotations

import torch
from torch import Tensor

from imm.sampling.registry import Sampler, register_sampler


@torch.no_grad()
def decode(model, z: Tensor, grid: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One step: the decoder's mean at z ~ N(0, I)."""
    return model.decode(z)


register_sampler(Sampler("decode", "decoder", "the decoder's mean at z ~ N(0, I), one step", decode))
