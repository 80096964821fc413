"""Layers that also run on forward-mode dual numbers with a gradient (TVM's JVP, trained through).

Two of PyTorch's kernels fail there: `scaled_dot_product_attention` has no forward-AD rule in its CPU flash kernel,
and its math path's softmax rule modifies a tensor that the backward pass needs ("modified by an inplace
operation"); `group_norm`'s rule views its input as if it were contiguous, so a channels-last or transposed
activation fails ("view size is not compatible"). On dual inputs these layers write the softmax out and make the
norm's input contiguous; on plain inputs they are PyTorch's own, at the same cost.
"""

from __future__ import annotations

import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.nn import functional as F


def is_dual(x: Tensor) -> bool:
    return fwAD.unpack_dual(x).tangent is not None


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over the last two dimensions (positions, features)."""
    if not (is_dual(q) or is_dual(k) or is_dual(v)):
        return F.scaled_dot_product_attention(q, k, v)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    e = (scores - scores.amax(-1, keepdim=True).detach()).exp()  # the shift cancels in the ratio: no gradient needed
    return (e / e.sum(-1, keepdim=True)) @ v


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state dict), with a dual input made contiguous first."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.contiguous() if is_dual(x) else x)
