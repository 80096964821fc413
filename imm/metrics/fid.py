"""FID and its kin: the Frechet distance between the features of samples and of the training set.

The training set's statistics (mu, sigma) depend only on the data and the feature extractor, so they are
computed once and cached as `<cache>/stats-<extractor id>-<data hash>.npz`, then reused by every trial,
evaluation and run that sees the same pair.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from imm.metrics.features import FeatureExtractor, data_key
from imm.metrics.frechet import feature_statistics, frechet_distance

Statistics = tuple[np.ndarray, np.ndarray]


def stats_path(cache: Path, extractor: FeatureExtractor, train: Tensor) -> Path:
    return cache / f"stats-{extractor.id}-{data_key(train, None)}.npz"


def reference_statistics(extractor: FeatureExtractor, train: Tensor, cache: Path, *, device="cpu",
                         batch_size: int = 250) -> tuple[Statistics, Path]:
    """(mu, sigma) of the training set's features, from the cache or computed and cached; and the file."""
    path = stats_path(cache, extractor, train)
    if path.is_file():
        with np.load(path) as f:
            return (f["mu"], f["sigma"]), path
    feats = torch.cat([extractor(train[i : i + batch_size].to(device), batch_size).cpu()
                       for i in range(0, len(train), batch_size)])
    mu, sigma = feature_statistics(feats.double().numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, n=len(train), extractor=extractor.id)
    os.replace(tmp, path)  # atomic: concurrent trials may race to write the same file; either copy is whole
    return (mu, sigma), path


def frechet_to_reference(features: Tensor, reference: Statistics) -> float:
    mu, sigma = feature_statistics(features.double().cpu().numpy())
    return frechet_distance(mu, sigma, *reference)
