"""Sample quality at each configured step count: the metric hook the trainer and `imm-orch eval` share.

For every K in eval.steps, eval.n_samples samples are drawn in chunks of eval.batch_size, chunk i from the
seed eval.seed + i, so the samples do not depend on how many workers draw them. With several workers each
draws the chunks i = rank (mod world size) and extracts their features; rank 0 gathers both and reports

    energy/steps_K   energy distance to the held-out set (any data)
    fid/steps_K      Frechet distance of Inception pool3 features to the training set's (images, with weights)
    fd/steps_K       the same on the project's own extractor (a trained classifier, or random Fourier features)

(see imm.metrics.features for which extractor applies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import Tensor, nn

from imm.checks import ConfigError
from imm.data import Data
from imm.metrics import energy_distance
from imm.metrics.features import FeatureExtractor, build_extractor, cache_dir, resolve_kind
from imm.metrics.fid import frechet_to_reference, reference_statistics
from imm.sampling import generate, num_classes_of

if TYPE_CHECKING:
    from imm.data.latents import LatentDecoder

QUALITY_PREFIXES = ("energy/", "fid/", "fd/")


def wants_inception(cfg: DictConfig) -> bool:
    """Inception features asked for: by name, or by `auto` with weights given (for latents, the only extractor)."""
    return cfg.eval.features == "inception" or (cfg.eval.features == "auto" and bool(cfg.eval.inception_weights))


def frechet_prefix(cfg: DictConfig) -> str | None:
    """The name of the Frechet metric this config reports: fid, fd, or None (eval.features=none)."""
    kind = cfg.eval.features
    if cfg.data.name.startswith("latents:"):  # only Inception, on decoded samples
        return "fid" if wants_inception(cfg) else None
    if kind == "none":
        return None
    if kind == "auto":
        return "fid" if cfg.eval.inception_weights else "fd"
    return "fid" if kind == "inception" else "fd"


def metric_names(cfg: DictConfig) -> list[str]:
    """The metrics a run of `cfg` reports (what a sweep may optimise): the loss and quality at each step count."""
    prefixes = ["energy", *filter(None, [frechet_prefix(cfg)])]
    return ["train/loss", *(f"{p}/steps_{k}" for p in prefixes for k in cfg.eval.steps)]


@dataclass
class Evaluation:
    metrics: dict[str, float] = field(default_factory=dict)  # on rank 0; empty elsewhere
    samples: dict[int, Tensor] = field(default_factory=dict)  # {K: all samples (latents: 64, decoded)}, CPU, rank 0


class Evaluator:
    """Built once per run (the extractor and the reference statistics are the expensive part), called per evaluation."""

    def __init__(self, cfg: DictConfig, data: Data, device: torch.device | str = "cpu", rank: int = 0,
                 world_size: int = 1):
        self.cfg, self.device, self.rank = cfg, torch.device(device), rank
        self.world = world_size if world_size > 1 and dist.is_available() and dist.is_initialized() else 1
        self.heldout = data.heldout.to(self.device) if rank == 0 else None
        self.shape = data.shape
        self.extractor: FeatureExtractor | None = None
        self.reference = self.reference_file = None
        self.decoder: LatentDecoder | None = None
        # Without a process group only rank 0 evaluates (the other ranks cannot send it their share).
        self.active = rank == 0 or self.world > 1
        if data.train is None:  # latents: images only through the VAE, and no training images to fit anything on
            kind = self._latent_decoder(cfg, data)
        else:
            kind = resolve_kind(cfg.eval.features, cfg.eval.inception_weights, data.num_classes, data.is_image)
        if kind != "none" and self.active:
            cache = cache_dir(cfg.eval.cache)
            ext = build_extractor(kind, data, inception_weights=cfg.eval.inception_weights, cache=cache) \
                if rank == 0 else None
            if self.world > 1:  # one extractor for all: a trained one is built (or read) on rank 0 only
                box = [ext]
                dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
                ext = box[0]
            self.extractor = ext.to(self.device)
            if rank == 0:
                reference = cfg.eval.reference or (self.decoder(data.heldout) if self.decoder else data.train)
                self.reference, self.reference_file = reference_statistics(
                    self.extractor, reference, cache, device=self.device, batch_size=cfg.eval.batch_size)

    def _latent_decoder(self, cfg: DictConfig, data) -> str:
        """Load the VAE that decodes a latent set's samples (eval.vae, else the manifest's, if at hand); the
        feature kind that leaves: inception on decoded samples (asked for, or auto with weights), else none."""
        from imm.data.latents import LatentDecoder, decoder_vae

        vae = decoder_vae(data.manifest, cfg.eval.vae)
        wants = wants_inception(cfg)
        if wants and vae is None:
            raise ConfigError(f"eval.features: inception on latents needs the VAE that decodes them; set eval.vae (an "
                              f"AutoencoderKL folder or s3:// prefix; the set names {data.manifest.vae!r})")
        if vae and self.active:
            self.decoder = LatentDecoder(data.manifest, vae, self.device)
        return "inception" if wants else "none"

    @property
    def tags(self) -> dict[str, str]:
        """What the Frechet metric was computed with, for the run's record."""
        if self.extractor is None:
            return {"imm.eval.features": "none"}
        tags = {"imm.eval.features": self.extractor.kind, "imm.eval.extractor": self.extractor.id,
                "imm.eval.reference_stats": str(self.reference_file or "")}
        if self.extractor.note:
            tags["imm.eval.extractor_note"] = self.extractor.note
        return tags

    def __call__(self, model: nn.Module, steps: list[int] | None = None, seed: int | None = None) -> Evaluation:
        """Score `model` at eval.steps (or `steps`) from eval.seed's samples (or `seed`'s: a fresh draw)."""
        cfg, out = self.cfg, Evaluation()
        if not self.active:
            return out
        n, chunk = int(cfg.eval.n_samples), int(cfg.eval.batch_size)
        seed = int(cfg.eval.seed if seed is None else seed)
        mine = list(range(self.rank, math.ceil(n / chunk), self.world))
        classes = num_classes_of(model)
        for k in cfg.eval.steps if steps is None else steps:
            xs, fs = [], []
            for i in mine:
                b = min(chunk, n - i * chunk)
                labels = (torch.arange(i * chunk, i * chunk + b, device=self.device) % classes) if classes else None
                x = generate(model, cfg, b, k, seed=seed + i, data_shape=self.shape,
                             labels=labels, batch_size=chunk)
                xs.append(x)
                if self.extractor is not None:
                    fs.append(self.extractor(self.decoder(x) if self.decoder else x, chunk))
            x_all = self._gather(xs, n, self.shape)
            f_all = self._gather(fs, n, (self.extractor.dim,)) if self.extractor is not None else None
            if self.rank != 0:
                continue
            out.metrics[f"energy/steps_{k}"] = energy_distance(x_all, self.heldout)
            if f_all is not None:  # samples gone non-finite (a diverging run) have no Frechet distance, not an error
                out.metrics[f"{self.extractor.metric_prefix}/steps_{k}"] = (
                    frechet_to_reference(f_all, self.reference) if bool(torch.isfinite(f_all).all()) else float("nan"))
            # latents: the first 64 decoded, what a sample grid shows
            out.samples[k] = (self.decoder(x_all[:64]) if self.decoder else x_all).cpu()
        return out

    def _gather(self, parts: list[Tensor], n: int, row: tuple[int, ...]) -> Tensor:
        """The n rows in chunk order from every rank's chunks (rank r holds chunks r, r + W, ...)."""
        if self.world == 1:
            return torch.cat(parts)
        chunk, world = int(self.cfg.eval.batch_size), self.world
        n_chunks = math.ceil(n / chunk)
        slots = math.ceil(n_chunks / world)
        local = torch.zeros((slots * chunk, *row), device=self.device)
        for s, p in enumerate(parts):
            local[s * chunk : s * chunk + len(p)] = p
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        return torch.cat([gathered[i % world][(i // world) * chunk :][: min(chunk, n - i * chunk)]
                          for i in range(n_chunks)])
