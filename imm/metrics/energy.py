"""Energy distance (Szekely & Rizzo): D^2(P, Q) = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||.

Zero iff P = Q. The within-set terms are U-statistics (no self-pairs), so the estimate is unbiased. Distances are
summed a block of rows at a time, so memory stays at block x len(y) however many samples are compared.
"""

from __future__ import annotations

from collections.abc import Callable

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


def noise_floor(draw: Callable[[int, torch.Generator], Tensor], heldout: Tensor, n: int, draws: int = 8,
                average: int = 1) -> float:
    """Twice the std of what the metric reads for a perfect model: `draw(n, generator)` exact samples scored against
    `heldout` as a model's are (the mean over `average` sample draws). A difference between two scores below it is
    the metric's noise, not the model's (about 2 std of the difference of two such scores)."""
    import statistics

    seeds = iter(range(10_000, 10_000 + draws * average))
    values = [sum(energy_distance(draw(n, torch.Generator().manual_seed(next(seeds))), heldout)
                  for _ in range(average)) / average for _ in range(draws)]
    return 2 * statistics.stdev(values)
