"""FID and its kin: the Frechet distance between the features of samples and of the training set.

The training set's statistics (mu, sigma) depend only on the data and the feature extractor, so they are
computed once and cached as `<cache>/stats-<extractor id>-<data hash>.npz` (a folder, or an s3:// prefix
the cluster shares), then reused by every trial, evaluation and run that sees the same pair.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from imm.metrics.features import FeatureExtractor, data_key
from imm.metrics.frechet import feature_statistics, frechet_distance
from imm.remote import cached, publish

Statistics = tuple[np.ndarray, np.ndarray]


def stats_name(extractor: FeatureExtractor, train: Tensor) -> str:
    return f"stats-{extractor.id}-{data_key(train, None)}.npz"


def reference_statistics(extractor: FeatureExtractor, train: Tensor, cache: str | Path, *, device="cpu",
                         batch_size: int = 250) -> tuple[Statistics, str]:
    """(mu, sigma) of the training set's features, from the cache or computed and cached; and where it is cached."""
    name = stats_name(extractor, train)
    where = f"{str(cache).rstrip('/')}/{name}"
    path = cached(cache, name)
    if path is not None:
        with np.load(path) as f:
            return (f["mu"], f["sigma"]), where
    feats = torch.cat([extractor(train[i : i + batch_size].to(device), batch_size).cpu()
                       for i in range(0, len(train), batch_size)])
    mu, sigma = feature_statistics(feats.double().numpy())
    with tempfile.TemporaryDirectory(prefix="imm-cache-") as tmp:
        np.savez(Path(tmp) / name, mu=mu, sigma=sigma, n=len(train), extractor=extractor.id)
        publish(Path(tmp) / name, cache, name)  # concurrent trials may race to write it: either copy is whole
    return (mu, sigma), where


def frechet_to_reference(features: Tensor, reference: Statistics) -> float:
    mu, sigma = feature_statistics(features.double().cpu().numpy())
    return frechet_distance(mu, sigma, *reference)
