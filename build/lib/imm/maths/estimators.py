"""Grouped MMD^2 estimators (method notes section 6)."""

from __future__ import annotations

import torch
from torch import Tensor

from imm.maths.kernels import Kernel

ESTIMATORS = ("v", "u")


def mmd2(x: Tensor, y: Tensor, kernel: Kernel, scale: Tensor, unbiased: bool = False) -> Tensor:
    """MMD^2 between the groups x: (..., M, D) and y: (..., M, D), one value per group (...).

    V-statistic (the paper's, default): mean over all pairs of k(x,x') + k(y,y') - 2 k(x,y').
    U-statistic (unbiased=True): the same over pairs i != j only. It drops the paired diagonal of the
    cross term too, because IMM's x_i and y_i share data and noise and are not independent.
    """
    kxx, kyy, kxy = kernel(x, x, scale), kernel(y, y, scale), kernel(x, y, scale)
    h = kxx + kyy - kxy - kxy.transpose(-1, -2)
    m = h.shape[-1]
    if not unbiased:
        return h.mean((-1, -2))
    if m < 2:
        raise ValueError("the U-statistic needs groups of at least 2 samples (imm.group_size >= 2)")
    off_diag = h.sum((-1, -2)) - torch.diagonal(h, dim1=-2, dim2=-1).sum(-1)
    return off_diag / (m * (m - 1))


def at_least_fp32(x: Tensor) -> Tensor:
    """x upcast to fp32 if it is in a lower precision (a bf16 autocast output), else unchanged (fp64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
