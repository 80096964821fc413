"""Sample-quality metrics."""

from imm.metrics.energy import energy_distance, noise_floor
from imm.metrics.frechet import feature_statistics, frechet_distance

__all__ = ["energy_distance", "feature_statistics", "frechet_distance", "noise_floor"]
