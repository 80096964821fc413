"""The official IMM checkpoints (github.com/lumalabs/imm) as checkpoints of this project, the yardstick for our
network, samplers and FID: `imm-orch import --from official-cifar10 PATH --out DIR` (or official-imagenet256-ts-a2,
official-imagenet256-s-a1), then `imm-orch eval --model DIR`. The files are read without running anything in them
(imm.networks.official)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from imm.config import load_config
from imm.methods import build_model
from imm.networks.official import file_bytes, official_to_ours, read_official
from imm.training.checkpoint import CHECKPOINT_FILE

# --from NAME: the built-in config whose network the weights fit (with the overrides that select it), the data
# shape and the classes. The official ImageNet files: imagenet256_ts_a2.pkl passes t - s as the second time
# embedding (our `stride`) and was trained with a = 2; imagenet256_s_a1.pkl passes s itself, a = 1.
SOURCES = {
    "official-cifar10": ("cifar10", [], (3, 32, 32), 0),
    "official-imagenet256-ts-a2": ("imagenet256_dit", ["model.s_embedding=stride", "imm.a=2"], (4, 32, 32), 1000),
    "official-imagenet256-s-a1": ("imagenet256_dit", ["model.s_embedding=identity", "imm.a=1"], (4, 32, 32), 1000),
}

def import_official(source: str, path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """A checkpoint dict of this project (imm.train's format, EMA weights = the official EMA) from an official file."""
    if source not in SOURCES:
        raise ValueError(f"--from: {source!r} is not one of {list(SOURCES)}")
    config, selects, shape, classes = SOURCES[source]
    cfg = load_config(config, [*selects, *(overrides or [])])
    sigma_d = float(cfg.data.sigma_d)
    model = build_model(cfg, shape, sigma_d, classes)
    raw = file_bytes(path)  # read once: parsed and hashed
    weights = official_to_ours(read_official(path, raw), model, cfg.model.arch)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return {"step": 0, "model": weights, "ema": weights, "ema_updates": 0, "sigma_d": sigma_d,
            "config": OmegaConf.to_container(cfg, resolve=True), "data_shape": list(shape), "num_classes": classes,
            "imported_from": f"{source}:{Path(path).name} sha256:{digest}"}


def write_checkpoint(checkpoint: dict[str, Any], folder: str | Path) -> Path:
    """Write an imported checkpoint as FOLDER/checkpoint.pt, atomically (a crash never leaves half a file where
    `imm-orch eval` would read it); its path."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, folder / CHECKPOINT_FILE)
    return folder / CHECKPOINT_FILE
