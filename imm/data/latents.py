"""Latent data sets larger than memory: `.npy` shards of pre-encoded VAE latents and a manifest, local or on S3.

Format `imm-latents/1`, a folder (or s3:// prefix) holding

    manifest.json          {"format": "imm-latents/1", "shape": [C, H, W], "dtype": "float16", "count": N,
                            "num_classes": K, "vae": "...", "mean": [C], "std": [C], "final_std": 0.5,
                            "posterior": "mean" or "sample", "xflip": false, "shards": [{"file": "shard-00000.npy",
                            "labels": "shard-00000.labels.npy", "count": n, "sha256": "...",
                            "labels_sha256": "..."}, ...],
                            "heldout": {"file": ..., "labels": ..., "count": n} or null}
    shard-00000.npy        posterior "mean": (n, C, H, W), the VAE encoder's posterior mean; "sample": (n, 2C, H, W),
                           its mean and std, and each read draws z = mean + std * N(0, I) (what the official IMM
                           encoder stores and draws, training/encoders.py); in `dtype`
    shard-00000.labels.npy (n,) int64 class labels (absent when num_classes is 0)

Training sees x = (z - mean) / std * final_std per channel (the official IMM ImageNet recipe: final_std 0.5, so
sigma_d = final_std); `decode_scale` undoes it before the VAE decodes. mean and std are the set's own statistics, or
the official constants (OFFICIAL_NORMALISATION, `imm-orch encode --normalisation official`) that the released
ImageNet weights expect; a config's data.latent_mean/latent_std override the manifest's (imagenet256_dit.yaml sets
the official ones, so an imported model decodes with them whatever set is at hand). Horizontal flips are not in
the format: `data.xflip` is refused for latents (a flipped image's latent is not the flipped latent).

Worker r of W trains on shards r, r + W, ... only. Local shards are memory-mapped: a batch reads its rows and
nothing else. S3 shards go through a bounded cache on the worker's disk (`data.latent_cache_gb`): the worker's
shards are visited a window at a time (as many as fit), batches drawn uniformly from the window in residence, and
the window moves on as training consumes it, so no shard is fetched by two workers and none twice per pass.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from imm.checks import ConfigError
from imm.data.remote import DEFAULT_CACHE, exists, file_sha256, is_remote, local_copy, s3_client, split

FORMAT = "imm-latents/1"
# The official ImageNet-256 latent normalisation (lumalabs/imm configs/im256_generate_images.yaml, for
# stabilityai/sd-vae-ft-ema's raw latents, no 0.18215 factor): x = (z - raw_mean) * 0.5 / raw_std.
OFFICIAL_NORMALISATION = {"mean": [0.86488, -0.27787343, 0.21616915, 0.3738409],
                          "std": [4.85503674, 5.31922414, 3.93725398, 3.9870003]}
MANIFEST = "manifest.json"
PREFIX = "latents:"


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def read_text(uri: str) -> str:
    """A text file's contents, local or on S3 (a set's manifest)."""
    if is_remote(uri):
        bucket, key = split(uri)
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return Path(uri).read_text()


def stored_shape(shape: tuple[int, ...], posterior: str) -> tuple[int, ...]:
    """A stored row's shape: the latent's, or mean and std stacked on the channels for posterior=sample."""
    c, *rest = shape
    return (2 * c, *rest) if posterior == "sample" else tuple(shape)


@dataclass(frozen=True)
class Manifest:
    root: str
    shape: tuple[int, ...]
    dtype: str
    count: int
    shards: list[dict]
    num_classes: int = 0
    vae: str = ""
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    final_std: float = 0.5
    heldout: dict | None = None
    posterior: str = "mean"  # sample: the shards hold the posterior's mean and std, and each read draws from it

    @classmethod
    def read(cls, root: str) -> Manifest:
        where = f"data.name=latents:{root}"
        try:
            raw = json.loads(read_text(_join(root, MANIFEST)))
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: no {MANIFEST} there (write one with `imm-orch encode`)") from None
        if raw.get("format") != FORMAT:
            raise ConfigError(f"{where}: {MANIFEST} has format {raw.get('format')!r}, expected {FORMAT!r}")
        return cls(root=root, shape=tuple(raw["shape"]), dtype=raw["dtype"], count=int(raw["count"]),
                   shards=raw["shards"], num_classes=int(raw.get("num_classes", 0)), vae=raw.get("vae", ""),
                   mean=list(raw["mean"]), std=list(raw["std"]), final_std=float(raw.get("final_std", 0.5)),
                   heldout=raw.get("heldout"), posterior=raw.get("posterior", "mean"))

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return stored_shape(self.shape, self.posterior)

    def normalise(self, rows: np.ndarray, draw: bool = True) -> Tensor:
        """Stored rows -> training space: (z - mean) / std * final_std per channel, float32. For posterior=sample z
        is drawn from each row's posterior with torch's global RNG (seeded per step in training), or with
        draw=False its mean (the held-out latents the metrics compare with)."""
        z = torch.from_numpy(np.asarray(rows, dtype=np.float32))
        if self.posterior == "sample":
            mu, std = z.chunk(2, dim=1)
            z = mu + std * torch.randn_like(mu) if draw else mu
        mean, scale = self._per_channel()
        return (z - mean) * scale

    def decode_scale(self, x: Tensor) -> Tensor:
        """Training space -> the VAE's latent space (the inverse of `normalise`)."""
        mean, scale = self._per_channel()
        return x / scale.to(x) + mean.to(x)

    def _per_channel(self) -> tuple[Tensor, Tensor]:
        view = (-1,) + (1,) * (len(self.shape) - 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(view)
        scale = self.final_std / torch.tensor(self.std, dtype=torch.float32).view(view)
        return mean, scale


class LatentWriter:
    """Writes a latent set into a local folder, shard by shard, keeping per-channel sums for mean and std."""

    def __init__(self, out: str | Path, shape, *, shard_size: int = 4096, dtype: str = "float16", num_classes: int = 0,
                 vae: str = "", final_std: float = 0.5, posterior: str = "mean"):
        """`shape` is the latent's (C, H, W); with posterior=sample the rows added hold mean and std (2C channels)."""
        self.out, self.shape, self.shard_size, self.dtype = Path(out), tuple(shape), shard_size, dtype
        self.num_classes, self.vae, self.final_std, self.posterior = num_classes, vae, final_std, posterior
        self.rows = stored_shape(self.shape, posterior)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self.heldout: dict | None = None
        self._z: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._buffered = 0
        self._sum = np.zeros(self.shape[0])
        self._sq = np.zeros(self.shape[0])
        self._n = 0

    def _save(self, stem: str, z: np.ndarray, y: np.ndarray) -> dict:
        """Write a shard (and its labels); its manifest entry, with each file's SHA-256 (the set's digest is the
        manifest's: `imm.data.digest`)."""
        np.save(self.out / f"{stem}.npy", z.astype(self.dtype))
        entry = {"file": f"{stem}.npy", "count": len(z), "sha256": file_sha256(self.out / f"{stem}.npy")}
        if self.num_classes:
            np.save(self.out / f"{stem}.labels.npy", y.astype(np.int64))
            entry["labels"] = f"{stem}.labels.npy"
            entry["labels_sha256"] = file_sha256(self.out / f"{stem}.labels.npy")
        return entry

    def add(self, z: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Rows (n, C, H, W) (posterior sample: (n, 2C, H, W), mean then std) and their labels; full shards are
        written as they fill. The statistics are those of the latents training draws: E[z], E[z^2] = mu^2 + std^2."""
        z = np.asarray(z)
        if tuple(z.shape[1:]) != self.rows:
            raise ValueError(f"latents of shape {tuple(z.shape[1:])}, expected {self.rows}")
        labels = np.zeros(len(z), np.int64) if labels is None else np.asarray(labels)
        axes = (0, *range(2, z.ndim))
        mu, std = np.split(z, 2, axis=1) if self.posterior == "sample" else (z, np.zeros(1))
        self._sum += mu.sum(axis=axes, dtype=np.float64)
        self._sq += (np.square(mu, dtype=np.float64) + np.square(std, dtype=np.float64)).sum(axis=axes)
        self._n += len(z) * math.prod(self.shape[1:])
        self._z.append(z)
        self._y.append(labels)
        self._buffered += len(z)
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        z, y = np.concatenate(self._z), np.concatenate(self._y)
        self.shards.append(self._save(f"shard-{len(self.shards):05d}", z[:n], y[:n]))
        self._z, self._y, self._buffered = [z[n:]], [y[n:]], len(z) - n

    def add_heldout(self, z: np.ndarray, labels: np.ndarray | None = None) -> None:
        """The held-out latents the metrics compare with (not counted in the training statistics)."""
        z = np.asarray(z)
        if tuple(z.shape[1:]) != self.rows:
            raise ValueError(f"held-out latents of shape {tuple(z.shape[1:])}, expected {self.rows}")
        labels = np.zeros(len(z), np.int64) if labels is None else np.asarray(labels)
        self.heldout = self._save("heldout", z, labels)

    def close(self, mean: list[float] | None = None, std: list[float] | None = None) -> Manifest:
        """Write the last shard and the manifest; mean and std default to the training latents' own."""
        if self._buffered:
            self._flush(self._buffered)
        if not self.shards:
            raise ValueError("no latents were written")
        own_mean = self._sum / self._n
        own_std = np.sqrt(np.maximum(self._sq / self._n - own_mean**2, 1e-12))
        raw = {"format": FORMAT, "shape": list(self.shape), "dtype": self.dtype,
               "count": sum(s["count"] for s in self.shards), "num_classes": self.num_classes, "vae": self.vae,
               "mean": list(map(float, own_mean if mean is None else mean)),
               "std": list(map(float, own_std if std is None else std)), "final_std": self.final_std,
               "posterior": self.posterior, "xflip": False, "shards": self.shards, "heldout": self.heldout}
        tmp = self.out / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(raw, indent=1))
        tmp.replace(self.out / MANIFEST)  # the manifest last: a folder without one is an unfinished write
        return Manifest.read(str(self.out))


class ShardReader:
    """This worker's shards: memory-mapped where local, fetched window by window into a bounded cache from S3."""

    def __init__(self, manifest: Manifest, rank: int, world_size: int, cache_bytes: float, cache_dir: Path | None = None):
        self.m = manifest
        self.mine = manifest.shards[rank::world_size]
        if not self.mine:
            raise ConfigError(f"data.name=latents:{manifest.root}: {len(manifest.shards)} shard(s) for {world_size} "
                              "workers; every worker needs one (encode with a smaller --shard-size)")
        self.remote = is_remote(manifest.root)
        row_bytes = np.dtype(manifest.dtype).itemsize * math.prod(manifest.stored_shape)
        largest = max(s["count"] for s in self.mine) * row_bytes
        self.window = len(self.mine) if not self.remote else max(1, min(len(self.mine), int(cache_bytes // largest)))
        self.cache = cache_dir or DEFAULT_CACHE / "latents" / _slug(manifest.root)
        self.fetched_bytes = 0  # from S3, by this worker
        self.fetched_files: list[str] = []
        self._resident: tuple[int, list[np.ndarray], np.ndarray, Tensor | None] | None = None
        self._labels: dict[int, Tensor] = {}  # this worker's shards' labels, fetched with their window

    def _path(self, name: str) -> Path:
        """A local path to one file of the set: the file itself, or its copy in the cache (fetched if missing)."""
        if not self.remote:
            return Path(self.m.root) / name
        local = self.cache / name
        if not local.is_file():
            self.cache.mkdir(parents=True, exist_ok=True)
            bucket, key = split(_join(self.m.root, name))
            fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=f".{name}.")
            os.close(fd)
            s3_client().download_file(bucket, key, tmp)
            os.replace(tmp, local)
            self.fetched_bytes += local.stat().st_size
            self.fetched_files.append(name)
        return local

    def labels_of(self, i: int) -> Tensor:
        """The labels of this worker's i-th shard (kept: a few bytes a row)."""
        if i not in self._labels:
            self._labels[i] = torch.from_numpy(np.load(self._path(self.mine[i]["labels"])))
        return self._labels[i]

    def _window(self, w: int):
        """Shards [w * window, (w + 1) * window) of this worker's, mapped; the previous window's copies dropped."""
        if self._resident is not None and self._resident[0] == w:
            return self._resident
        chosen = self.mine[w * self.window:(w + 1) * self.window]
        if self.remote and self._resident is not None and self.window < len(self.mine):
            keep = {s["file"] for s in chosen}
            for s in self.mine:  # only files of this worker's: another worker's cache entries are not ours to drop
                if s["file"] not in keep:
                    (self.cache / s["file"]).unlink(missing_ok=True)
        arrays = [np.load(self._path(s["file"]), mmap_mode="r") for s in chosen]
        ends = np.cumsum([len(a) for a in arrays])
        labels = torch.cat([self.labels_of(i) for i in range(w * self.window, w * self.window + len(chosen))]) \
            if self.m.num_classes else None
        self._resident = (w, arrays, ends, labels)
        return self._resident

    def batch(self, n: int, step: int, device) -> tuple[Tensor, Tensor | None]:
        """n rows drawn uniformly (torch's global RNG, so seeded per step) from the window step `step` is in."""
        n_windows = math.ceil(len(self.mine) / self.window)
        window_rows = sum(s["count"] for s in self.mine[:self.window])
        _, arrays, ends, labels = self._window(((step - 1) * n // window_rows) % n_windows)
        idx = torch.randint(int(ends[-1]), (n,)).numpy()
        which = np.searchsorted(ends, idx, side="right")
        starts = np.concatenate([[0], ends[:-1]])
        rows = np.empty((n, *self.m.stored_shape), dtype=self.m.dtype)
        for i, a in enumerate(arrays):
            hit = np.nonzero(which == i)[0]
            if len(hit):
                local = idx[hit] - starts[i]
                order = np.argsort(local)  # ascending offsets: the reads go forward through the file
                rows[hit[order]] = a[local[order]]
        x = self.m.normalise(rows).to(device)
        y = labels[torch.from_numpy(idx)].to(device) if labels is not None else None
        return x, y


def load_vae(uri: str):
    """diffusers' AutoencoderKL from a folder (config.json + weights) or an s3:// prefix holding one, in eval mode."""
    from diffusers import AutoencoderKL

    path = local_copy(uri)
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"--vae: {uri!r} has no config.json (give the folder AutoencoderKL.save_pretrained "
                                "wrote, e.g. a copy of stabilityai/sd-vae-ft-ema)")
    return AutoencoderKL.from_pretrained(str(path)).eval()


class LatentDecoder:
    """Training-space latents -> images in [-1, 1]: the set's scaling undone, then the VAE's decoder, in chunks."""

    def __init__(self, manifest: Manifest, vae: str, device):
        self.manifest, self.uri, self.device = manifest, vae, torch.device(device)
        self.vae = load_vae(vae).to(self.device)

    @torch.no_grad()
    def __call__(self, x: Tensor, batch_size: int = 64) -> Tensor:
        return torch.cat([self.vae.decode(self.manifest.decode_scale(x[i:i + batch_size].to(self.device).float()))
                          .sample.clamp(-1, 1) for i in range(0, len(x), batch_size)])


def decoder_vae(manifest: Manifest, configured: str | None) -> str | None:
    """The VAE that decodes this set's samples: eval.vae, else the one the manifest names if it is at hand."""
    if configured:
        return configured
    named = manifest.vae
    return named if named and exists(f"{named.rstrip('/')}/config.json") else None


def _slug(root: str) -> str:
    import hashlib

    return hashlib.sha256(root.encode()).hexdigest()[:16]


@dataclass
class LatentData:
    """`load_data`'s answer for `latents:PATH`: the manifest, the held-out latents (read when first asked for),
    and a reader per worker; it holds no training rows itself."""

    manifest: Manifest
    cache_bytes: float
    _heldout: tuple[Tensor, Tensor | None] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.manifest.shape

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    is_image = False  # latents, not pixels: no image metrics or grids until they are decoded
    train = None
    train_labels = None

    @property
    def sigma_d(self) -> float:
        return self.manifest.final_std

    def _read_heldout(self) -> tuple[Tensor, Tensor | None]:
        if self._heldout is None:
            h = self.manifest.heldout
            if h is None:
                raise ConfigError(f"data.name=latents:{self.manifest.root}: the set has no held-out latents for the "
                                  "metrics (encode with --heldout N)")
            reader = ShardReader(self.manifest, 0, 1, self.cache_bytes)
            x = self.manifest.normalise(np.load(reader._path(h["file"])), draw=False)
            y = torch.from_numpy(np.load(reader._path(h["labels"]))) if h.get("labels") else None
            self._heldout = (x, y)
        return self._heldout

    @property
    def heldout(self) -> Tensor:
        return self._read_heldout()[0]

    @property
    def heldout_labels(self) -> Tensor | None:
        return self._read_heldout()[1]

    def reader(self, rank: int, world_size: int) -> ShardReader:
        return ShardReader(self.manifest, rank, world_size, self.cache_bytes)


def load_latents(cfg) -> LatentData:
    if cfg.xflip:
        raise ConfigError("data.xflip: not for latents (a flipped image's latent is not the flipped latent); "
                          "set data.xflip=false")
    manifest = Manifest.read(cfg.name[len(PREFIX):])
    if cfg.latent_mean is not None:  # the model's own normalisation (e.g. the official constants), not the set's
        if len(cfg.latent_mean) != manifest.shape[0]:
            raise ConfigError(f"data.latent_mean, data.latent_std: {len(cfg.latent_mean)} channels, the set at "
                              f"{manifest.root} has {manifest.shape[0]}")
        manifest = replace(manifest, mean=list(cfg.latent_mean), std=list(cfg.latent_std))
    return LatentData(manifest, float(cfg.latent_cache_gb) * 2**30)
