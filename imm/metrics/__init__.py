"""Sample-quality metrics."""

from imm.metrics.energy import energy_distance

__all__ = ["energy_distance"]
