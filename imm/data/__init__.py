"""Data sets: toy 2D point clouds made from a fixed seed, `npy:PATH` arrays, and images: sklearn's bundled
digits, CIFAR-10 (arrays made by `imm-orch data cifar10`, or its python batches read without running code; see
`imm.data.cifar10`) and image folders (a local path or an s3:// URI), scaled to [-1, 1].

Nothing is downloaded from the internet: every set is made here, ships with a package, or is read from a
path the user gives; a missing one is an error that says where to put it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from imm.data import cifar10
from imm.data.remote import is_remote, local_copy
from imm.data.toy2d import TOY_SETS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class Data:
    """A training set and a held-out set of the same shape; labels for class-conditional models, if any."""

    train: Tensor  # (N, D) points or (N, C, H, W) images in [-1, 1]
    heldout: Tensor
    train_labels: Tensor | None = None  # (N,) int64 in [0, num_classes)
    heldout_labels: Tensor | None = None
    num_classes: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train.ndim == 4

    @property
    def sigma_d(self) -> float:
        """The training set's standard deviation (the preconditioning's sigma_d unless the config gives one)."""
        return float(self.train.std())


@dataclass(frozen=True)
class DataSource:
    """`data.name` parsed once: a set made here or shipped with a package (`8gaussians`, `digits`), or KIND:PATH with
    PATH a local path or an s3:// URI (`npy:`, `cifar10:`, `folder:`, `latents:`)."""

    kind: str  # the whole name for a set without a path
    path: str | None = None  # None: a set without a path

    @classmethod
    def parse(cls, name: str) -> DataSource:
        kind, sep, path = name.partition(":")
        return cls(kind, path) if sep else cls(name)

    @property
    def name(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"

    @property
    def is_local_path(self) -> bool:
        return bool(self.path) and not is_remote(self.path)


def load_data(cfg) -> Data:
    """The data set a DataConfig names (toy set, npy:PATH, digits, cifar10:PATH, folder:PATH; latents:PATH
    answers an imm.data.latents.LatentData, which streams its training rows instead of holding them)."""
    source = DataSource.parse(cfg.name)
    kind, path = (source.kind, source.path) if source.path is not None else (None, None)
    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.name in TOY_SETS:
        points = TOY_SETS[cfg.name](cfg.n_train + cfg.n_heldout, g)
        return Data(points[: cfg.n_train].contiguous(), points[cfg.n_train :].contiguous())
    if kind == "npy":
        return _split(_load_npy(path), None, cfg.heldout_fraction, g)
    if cfg.name == "digits":
        return _split(*_digits(), cfg.heldout_fraction, g, num_classes=10)
    if kind == "cifar10":
        return _cifar10(path)
    if kind == "folder":
        images, labels, n_classes = _folder(path)
        return _split(images, labels, cfg.heldout_fraction, g, num_classes=n_classes)
    if kind == "latents":
        from imm.data.latents import load_latents

        return load_latents(cfg)
    raise ValueError(f"data.name: {cfg.name!r} is not one of {sorted(TOY_SETS)}, digits, npy:PATH, cifar10:PATH, "
                     "folder:PATH or latents:PATH (PATH may be s3://bucket/prefix)")


def probe(name: str) -> None:
    """load_data's checks of a local data set, without reading it: the file or folder exists and has the right
    shape, so a mistake fails before any cluster starts. s3:// paths are checked where the workers read them."""
    source = DataSource.parse(name)
    if not source.is_local_path:
        return
    kind, path = source.kind, source.path
    if kind == "npy":
        _npy_array(path, mmap_mode="r")  # the header only
    elif kind == "cifar10":
        cifar10.files(Path(path), path)
    elif kind == "folder":
        _image_files(Path(path), path, first_only=True)
    elif kind == "latents":
        from imm.data.latents import Manifest

        Manifest.read(path)


def _digits() -> tuple[Tensor, Tensor]:
    """sklearn's 1797 handwritten digits (8x8, 17 grey levels, shipped with the package), as (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32)).unsqueeze(1) / 8.0 - 1.0  # [0, 16] -> [-1, 1]
    return x, torch.from_numpy(d.target.astype(np.int64))


def _cifar10(uri: str) -> Data:
    """CIFAR-10's 50,000 training images; its 10,000 test images held out."""
    x, y, xh, yh = cifar10.load(local_copy(uri), uri)
    return Data(_to_unit(x), _to_unit(xh), torch.from_numpy(y), torch.from_numpy(yh), num_classes=10)


def _image_files(root: Path, uri: str, first_only: bool = False) -> list[Path]:
    """The images in `root` and in its subfolders (one level: they name the classes), never deeper."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.name: folder {uri!r} not found; put the images (or one subfolder per class) there")
    found = (p for pattern in ("*", "*/*") for p in root.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS)
    files = [f for f in [next(found, None)] if f] if first_only else sorted(found)
    if not files:
        raise FileNotFoundError(f"data.name: no images ({', '.join(IMAGE_EXTENSIONS)}) in {uri!r} or its subfolders")
    return files


def _folder(uri: str) -> tuple[Tensor, Tensor | None, int]:
    """Images under a folder, all of one size; one level of subfolders names the classes."""
    from PIL import Image

    root = local_copy(uri)
    files = _image_files(root, uri)
    classes = sorted({p.parent.name for p in files if p.parent != root})
    mode = "L" if all(Image.open(p).mode in ("L", "1") for p in files[:50]) else "RGB"
    arrays = [np.asarray(Image.open(p).convert(mode)) for p in files]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"data.name: images under {uri!r} have different sizes {sorted(sizes)[:4]}; resize them first")
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    labels = None
    if classes and all(p.parent != root for p in files):
        labels = torch.tensor([classes.index(p.parent.name) for p in files])
    return _to_unit(x), labels, len(classes) if labels is not None else 0


def _to_unit(x: np.ndarray) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return torch.from_numpy(x).float() / 127.5 - 1.0


def _npy_array(path: str, mmap_mode: str | None = None) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data.name: npy file {path!r} not found; give an (N, D) float array saved by numpy.save")
    try:
        arr = np.load(p, allow_pickle=False, mmap_mode=mmap_mode)
    except ValueError as e:  # not a .npy file, or a pickled object array
        raise ValueError(f"data.name: {path!r} is not an (N, D) numeric array saved by numpy.save ({e})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"data.name: {path!r} must hold an (N, D) numeric array, got shape {arr.shape} {arr.dtype}")
    return arr


def _load_npy(path: str) -> Tensor:
    return torch.from_numpy(_npy_array(path).astype(np.float32))


def _split(x: Tensor, labels: Tensor | None, heldout_fraction: float, g: torch.Generator,
           num_classes: int = 0) -> Data:
    perm = torch.randperm(len(x), generator=g)
    n_held = max(1, int(round(heldout_fraction * len(x))))
    if n_held >= len(x):
        raise ValueError(f"data.heldout_fraction={heldout_fraction} leaves no training rows out of {len(x)}")
    train, held = perm[n_held:], perm[:n_held]
    if labels is None:
        return Data(x[train].contiguous(), x[held].contiguous())
    return Data(x[train].contiguous(), x[held].contiguous(), labels[train], labels[held], num_classes)


def random_xflip(x: Tensor) -> Tensor:
    """Mirror each image left-right with probability 1/2 (the paper's x-flip augmentation)."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def shard(points: Tensor | None, rank: int, world_size: int) -> Tensor | None:
    """This worker's share of the training set (every world_size-th row)."""
    return None if points is None else points[rank::world_size]
