"""Energy distance (Szekely & Rizzo): D^2(P, Q) = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||.

Zero iff P = Q. The within-set terms are U-statistics (no self-pairs), so the estimate is unbiased.
"""

from __future__ import annotations

import torch
from torch import Tensor


def energy_distance(x: Tensor, y: Tensor) -> float:
    x, y = x.flatten(1).double(), y.flatten(1).double()
    n, m = len(x), len(y)
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).sum() / (n * (n - 1))
    yy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)
