"""Feature extractors for Frechet distances, chosen by `eval.features`:

    inception   Inception-v3 pool3 (2048-d) with the weights at eval.inception_weights: the FID of the literature
    classifier  the penultimate layer (128-d) of a small classifier trained once on the training set's labels and
                cached: the stand-in for data Inception was not made for (sklearn's 8x8 digits)
    rff         random Fourier features (256-d, lengthscale = the data's std, fixed seed): for unlabelled data
                (2D toy sets, npy arrays); nothing to train, and the Frechet distance's mean term is an MMD
    auto        inception when eval.inception_weights is set, else classifier for labelled data, else rff

Every extractor has an `id` naming it and its weights (a content hash), so cached reference statistics are
never reused with a different network.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from imm.data.remote import DEFAULT_CACHE, cached, local_copy, publish

FEATURES = ("auto", "inception", "classifier", "rff", "none")
CLASSIFIER_STEPS = 600  # 10 s on 2 CPU cores for digits: 97% held-out accuracy


@dataclass
class FeatureExtractor:
    kind: str  # inception, classifier or rff
    id: str  # kind and a hash of what determines its output (weights, data)
    net: Callable[[Tensor], Tensor]  # (N, ...) on the net's device -> (N, dim)
    dim: int
    note: str = ""  # a human description (e.g. the classifier's held-out accuracy)

    @property
    def metric_prefix(self) -> str:
        """fid for Inception features (comparable with published FIDs), fd for the project's own extractors."""
        return "fid" if self.kind == "inception" else "fd"

    def to(self, device) -> FeatureExtractor:
        if isinstance(self.net, nn.Module):
            self.net.to(device)
        return self

    @torch.no_grad()
    def __call__(self, x: Tensor, batch_size: int = 250) -> Tensor:
        """Features of x (already on the net's device) in batches, as float32."""
        return torch.cat([self.net(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])


def cache_dir(configured: str | None) -> str:
    """eval.cache (a folder or an s3:// prefix shared by the cluster), else $IMM_CACHE/metrics (~/.cache/imm/metrics)."""
    return configured or str(DEFAULT_CACHE / "metrics")


def data_key(train: Tensor, labels: Tensor | None) -> str:
    """A content hash of a training set (and its labels): the cache key of what is computed from it."""
    h = hashlib.sha1(str(tuple(train.shape)).encode())
    h.update(train.detach().cpu().contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_kind(features: str, inception_weights: str | None, num_classes: int, is_image: bool) -> str:
    """What `auto` means for this data (and a check that an explicit choice applies to it)."""
    if features == "auto":
        return "inception" if inception_weights else ("classifier" if num_classes >= 2 else "rff")
    if features == "classifier" and num_classes < 2:
        raise ValueError("eval.features: 'classifier' needs data with at least 2 classes; use rff or auto")
    if features == "inception" and not is_image:
        raise ValueError("eval.features: 'inception' needs images; use rff or auto for point data")
    return features


def inception_extractor(weights: str) -> FeatureExtractor:
    """pool3 of the FID Inception, from a local path or an s3:// URI (copied once to the local cache)."""
    from imm.metrics.inception import WEIGHTS_HELP, load_inception

    try:
        path = local_copy(weights)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"eval.inception_weights: {e}. {WEIGHTS_HELP}") from None
    net = load_inception(path)
    return FeatureExtractor("inception", f"inception-{file_sha256(path)[:16]}", Quantized(net), net.dim)


class Quantized(nn.Sequential):
    """Rounds [-1, 1] samples to 8-bit levels first, as images saved to PNG (how FID is usually taken) would be."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1)


def rff_extractor(train: Tensor, dim: int = 256, seed: int = 0) -> FeatureExtractor:
    """sqrt(2/dim) cos(W x / l + b), W ~ N(0, I), b ~ U[0, 2 pi), l = the training data's overall std."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(train.shape[1:])
    lengthscale = float(train.flatten(1).std())
    w, b = torch.randn(d, dim, generator=g) / lengthscale, torch.rand(dim, generator=g) * 2 * math.pi
    net = RandomFourierFeatures(w, b)
    return FeatureExtractor("rff", f"rff{dim}-s{seed}-l{lengthscale:.6g}", net, dim)


class RandomFourierFeatures(nn.Module):
    def __init__(self, w: Tensor, b: Tensor):
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("b", b)

    def forward(self, x: Tensor) -> Tensor:
        return math.sqrt(2 / self.w.shape[1]) * torch.cos(x.flatten(1).float() @ self.w + self.b)


class Classifier(nn.Module):
    """A small CNN (images) or MLP (vectors); `features` is the 128-d input of the last layer."""

    dim = 128

    def __init__(self, shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(shape) == 3:
            c = shape[0]
            self.features = nn.Sequential(
                nn.Conv2d(c, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(),
                nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(64, self.dim, 3, padding=1), nn.SiLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
        else:
            d = math.prod(shape)
            self.features = nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.SiLU(), nn.Linear(256, self.dim), nn.SiLU())
        self.head = nn.Linear(self.dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_classifier(train: Tensor, labels: Tensor, num_classes: int, steps: int = CLASSIFIER_STEPS,
                     seed: int = 0) -> Classifier:
    """Adam, batch 128, cross-entropy, on CPU with a fixed seed (so every machine trains the same network)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = Classifier(tuple(train.shape[1:]), num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(len(train), (128,), generator=g)
        loss = nn.functional.cross_entropy(net(train[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((net(x).argmax(1) == y).float().mean())


def classifier_extractor(data, cache: str | Path) -> FeatureExtractor:
    """The digits-style extractor: trained once per training set, then read from `cache` (a folder or s3://)."""
    net, acc, key = trained_classifier(data, cache)
    note = f"classifier trained on this data's labels ({CLASSIFIER_STEPS} steps), held-out accuracy {acc:.3f}"
    return FeatureExtractor("classifier", f"classifier-{key}", net.features, Classifier.dim, note)


def trained_classifier(data, cache: str | Path) -> tuple[Classifier, float, str]:
    """(the classifier of `data`'s labels, its held-out accuracy, its training set's key): trained once per
    training set, then read from `cache`. The guidance study reads class-conditioned samples' labels with it."""
    key = data_key(data.train, data.train_labels)
    name = f"classifier-{key}.pt"
    path = cached(cache, name)
    if path is not None:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = Classifier(tuple(data.shape), data.num_classes)
        net.load_state_dict(saved["state"])
        net.eval().requires_grad_(False)
        acc = float(saved["heldout_accuracy"])
    else:
        net = train_classifier(data.train, data.train_labels, data.num_classes)
        acc = accuracy(net, data.heldout, data.heldout_labels) if data.heldout_labels is not None else float("nan")
        with tempfile.TemporaryDirectory(prefix="imm-cache-") as tmp:
            torch.save({"state": net.state_dict(), "heldout_accuracy": acc}, Path(tmp) / name)
            publish(Path(tmp) / name, cache, name)
    return net, acc, key


def build_extractor(kind: str, data, *, inception_weights: str | None, cache: str | Path) -> FeatureExtractor:
    if kind == "inception":
        if not inception_weights:
            raise ValueError("eval.inception_weights: eval.features=inception needs the weights' path or s3:// URI")
        return inception_extractor(inception_weights)
    if kind == "classifier":
        return classifier_extractor(data, cache)
    return rff_extractor(data.train)
