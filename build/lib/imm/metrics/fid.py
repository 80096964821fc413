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

from imm.data.remote import cached, publish
from imm.metrics.features import FeatureExtractor, data_key
from imm.metrics.frechet import feature_statistics, frechet_distance

Statistics = tuple[np.ndarray, np.ndarray]


def stats_name(extractor: FeatureExtractor, train: Tensor) -> str:
    return f"stats-{extractor.id}-{data_key(train, None)}.npz"


def reference_statistics(extractor: FeatureExtractor, train: Tensor | str, cache: str | Path, *, device="cpu",
                         batch_size: int = 250) -> tuple[Statistics, str]:
    """(mu, sigma) of the reference images' features, from the cache or computed and cached; and where it is cached.
    The reference is the training set (a tensor in [-1, 1]) or a reference batch in ADM's format: an .npz (local
    or s3://) whose `arr_0` holds (N, H, W, 3) uint8 images, e.g. VIRTUAL_imagenet256_labeled.npz, featurised a
    chunk at a time with this project's extractor (so both sides of the distance share one network)."""
    if isinstance(train, str):
        from imm.data.remote import local_copy
        from imm.metrics.features import file_sha256

        local = local_copy(train)
        name = f"stats-{extractor.id}-npz-{file_sha256(local)[:16]}.npz"
        chunks = _npz_images(local, batch_size)
    else:
        name = stats_name(extractor, train)
        chunks = (train[i : i + batch_size] for i in range(0, len(train), batch_size))
    where = f"{str(cache).rstrip('/')}/{name}"
    path = cached(cache, name)
    if path is not None:
        with np.load(path) as f:
            return (f["mu"], f["sigma"]), where
    feats = torch.cat([extractor(x.to(device), batch_size).cpu() for x in chunks])
    mu, sigma = feature_statistics(feats.double().numpy())
    with tempfile.TemporaryDirectory(prefix="imm-cache-") as tmp:
        np.savez(Path(tmp) / name, mu=mu, sigma=sigma, n=len(feats), extractor=extractor.id)
        publish(Path(tmp) / name, cache, name)  # concurrent trials may race to write it: either copy is whole
    return (mu, sigma), where


def _npz_images(path: Path, batch_size: int):
    """Chunks of an ADM reference batch's images as float tensors in [-1, 1], (B, 3, H, W)."""
    with np.load(path) as f:
        if "arr_0" not in f.files:
            raise ValueError(f"eval.reference: {path} has no arr_0 (ADM's reference batches hold their images there)")
        images = f["arr_0"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"eval.reference: arr_0 is {images.dtype} {images.shape}, expected (N, H, W, 3) uint8 images")
    for i in range(0, len(images), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).permute(0, 3, 1, 2).float() / 127.5 - 1


def frechet_to_reference(features: Tensor, reference: Statistics) -> float:
    mu, sigma = feature_statistics(features.double().cpu().numpy())
    return frechet_distance(mu, sigma, *reference)
