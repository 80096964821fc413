"""Sample quality at each configured step count: the metric hook the trainer and `imm-orch eval` share."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import Tensor, nn

from imm.methods import generate
from imm.metrics import energy_distance


def metric_names(cfg: DictConfig) -> list[str]:
    """The metrics a run of `cfg` reports (what a sweep may optimise): the loss and quality at each step count."""
    return ["train/loss", *(f"energy/steps_{k}" for k in cfg.eval.steps)]


def evaluate(model: nn.Module, cfg: DictConfig, heldout: Tensor) -> tuple[dict[str, float], dict[int, Tensor]]:
    """({"energy/steps_K": D^2 to held-out data}, {K: samples}) for every K in eval.steps, fixed seed."""
    metrics, samples = {}, {}
    ref = heldout.to(next(model.parameters()).device)
    for k in cfg.eval.steps:
        x = generate(model, cfg, cfg.eval.n_samples, k, seed=cfg.eval.seed, data_shape=tuple(heldout.shape[1:]))
        metrics[f"energy/steps_{k}"] = energy_distance(x, ref)
        samples[k] = x.cpu()
    return metrics, samples
