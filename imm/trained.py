"""A trained model ready to sample: the network (EMA weights), its resolved config and the data shape in one
`nn.Module`. Stored two ways: as safetensors weights beside a JSON of the rest (`save_weights` / `load_weights`,
which run nothing from the files), and pickled whole inside an MLflow PyTorch model for MLflow's own tools
(unpickling runs whatever the pickle names: only for files you trust)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from imm.config import ConfigError, config_from_dict
from imm.methods import build_model
from imm.sampling import generate, num_classes_of, samplers_for

WEIGHTS_FILE = "weights.safetensors"  # a TrainedModel's network
SPEC_FILE = "model.json"  # its resolved config, data shape, sigma_d and classes


class TrainedModel(nn.Module):
    """`sample(n, steps, seed)` -> (n, *data_shape) samples in the data's range, reproducible from the seed."""

    def __init__(self, model: nn.Module, config: dict[str, Any], data_shape: tuple[int, ...],
                 sigma_d: float | None = None):
        super().__init__()
        self.model = model.eval()
        self.config = config  # the run's resolved config, as plain data (pickles without OmegaConf)
        self.data_shape = tuple(data_shape)
        self.sigma_d = sigma_d  # what the network was built with (models pickled before it was kept: None)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], ema: bool = True) -> TrainedModel:
        """From a training checkpoint dict (imm.train): the EMA weights unless ema=False."""
        cfg = config_from_dict(checkpoint["config"], training=False)
        shape = tuple(checkpoint["data_shape"])
        model = build_model(cfg, shape, checkpoint["sigma_d"], checkpoint.get("num_classes", 0))
        model.load_state_dict(checkpoint["ema" if ema else "model"])
        return cls(model, OmegaConf.to_container(cfg, resolve=True), shape, float(checkpoint["sigma_d"]))

    def save_weights(self, folder: str | Path) -> Path:
        """The network's weights as `WEIGHTS_FILE` (safetensors) and what rebuilds it as `SPEC_FILE` (JSON)."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sigma_d = self.sigma_d if self.sigma_d is not None else float(self.model.state_dict()["sigma_d"])
        spec = {"config": self.config, "data_shape": list(self.data_shape), "sigma_d": sigma_d,
                "num_classes": self.num_classes}
        (folder / SPEC_FILE).write_text(json.dumps(spec, indent=1))
        save_model(self.model, str(folder / WEIGHTS_FILE))  # tied tensors stored once
        return folder

    @classmethod
    def load_weights(cls, folder: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
        """From `save_weights`' files: JSON and tensors only, nothing unpickled."""
        from safetensors.torch import load_model

        folder = Path(folder)
        spec = json.loads((folder / SPEC_FILE).read_text())
        cfg = config_from_dict(spec["config"], training=False)
        shape = tuple(spec["data_shape"])
        model = build_model(cfg, shape, float(spec["sigma_d"]), int(spec["num_classes"]))
        load_model(model, str(folder / WEIGHTS_FILE), device=str(device))
        return cls(model, spec["config"], shape, float(spec["sigma_d"])).to(device)

    @property
    def cfg(self):
        return config_from_dict(self.config, training=False)

    @property
    def num_classes(self) -> int:
        return num_classes_of(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, n: int, steps: int = 1, seed: int = 0) -> Tensor:
        return self.sample(n, steps, seed)

    @torch.no_grad()
    def sample(self, n: int, steps: int = 1, seed: int = 0, *, sampler: str | None = None,
               label: int | None = None, cfg_scale: float | None = None, eta: float | None = None) -> Tensor:
        """n samples in `steps` steps; `label` picks one class of a class-conditional model (default: all in turn)."""
        cfg = self.cfg
        if n < 1:
            raise ConfigError(f"n: the number of samples must be >= 1, got {n}")
        if steps < 1:
            raise ConfigError(f"steps: must be >= 1, got {steps}")
        allowed = samplers_for(cfg.method)
        if sampler is not None and sampler not in allowed:
            raise ConfigError(f"sampler: {sampler!r} does not apply to method={cfg.method}; choose one of {list(allowed)}")
        for key, value in (("sample.eta", eta), ("sample.cfg_scale", cfg_scale)):
            if value is not None:
                OmegaConf.update(cfg, key, value)
        labels = None
        if label is not None:
            if not 0 <= label < self.num_classes:
                raise ConfigError(f"label: {label} is not a class of this model (it has {self.num_classes})")
            labels = torch.full((n,), label, device=self.device)
        return generate(self.model, cfg, n, steps, sampler=sampler, seed=seed, data_shape=self.data_shape,
                        labels=labels)


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """From a checkpoint.pt file or a folder holding one."""
    from imm.training.checkpoint import load_checkpoint

    return TrainedModel.from_checkpoint(load_checkpoint(path, map_location=device)).to(device)


SAMPLE_FLAGS = ("n", "steps", "sampler", "label", "cfg_scale", "eta")
DEFAULT_SAMPLES = 64  # an 8 x 8 grid


def add_sample_flags(parser) -> None:
    """The flags of `python -m imm.sample` and `imm-orch sample`, one home for both: TrainedModel.sample's arguments
    and the output file."""
    parser.add_argument("--steps", type=int, default=1, help="sampling steps (1..8 for IMM; default 1)")
    parser.add_argument("--n", type=int, default=DEFAULT_SAMPLES, help=f"number of samples (default {DEFAULT_SAMPLES})")
    parser.add_argument("--out", required=True, help="output file: .npy (raw samples) or .png (grid or scatter)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default=None,
                        help="one of the model's method's samplers (default: the one it was trained to use; a wrong "
                             "one is an error that lists them), e.g. pushforward|restart for imm, euler|heun for fm")
    parser.add_argument("--eta", type=float, default=None, help="ddim: 0 deterministic (default), 1 DDPM-like")
    parser.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--label", type=int, default=None, help="class-conditional models: sample this class only")


def sample_with_flags(model: TrainedModel, args) -> Tensor:
    """TrainedModel.sample with the flags add_sample_flags added."""
    return model.sample(args.n, args.steps, args.seed, sampler=args.sampler, label=args.label,
                        cfg_scale=args.cfg_scale, eta=args.eta)


def as_flag_error(e: Exception) -> str:
    """'label: 10 is not ...' from TrainedModel.sample -> '--label: 10 is not ...' for a command line."""
    head, sep, rest = str(e).partition(":")
    return f"--{head.replace('_', '-')}{sep}{rest}" if sep and head in SAMPLE_FLAGS else str(e)


Generator = TrainedModel  # its name before issue 25: models promoted then are pickled as imm.generator.Generator
