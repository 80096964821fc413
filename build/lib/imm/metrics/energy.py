"""Energy distance (Szekely & Rizzo): D^2(P, Q) = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||.

Zero iff P = Q. The within-set terms are U-statistics (no self-pairs), so the estimate is unbiased. Distances are
summed a block of rows at a time, so memory stays at block x len(y) however many samples are compared.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _distance_sum(a: Tensor, b: Tensor, block: int) -> Tensor:
    return sum(torch.cdist(a[i:i + block], b).sum() for i in range(0, len(a), block))


def energy_distance(x: Tensor, y: Tensor, block: int = 2048) -> float:
    x, y = x.flatten(1).double(), y.flatten(1).double()
    n, m = len(x), len(y)
    xy = _distance_sum(x, y, block) / (n * m)
    xx = _distance_sum(x, x, block) / (n * (n - 1))
    yy = _distance_sum(y, y, block) / (m * (m - 1))
    return float(2 * xy - xx - yy)
