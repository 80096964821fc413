"""Inductive Moment Matching (Zhou, Ermon, Song, ICML 2025) and its baselines, in pure PyTorch.

    config.py   the run config: every key, its default, its checks
    maths/      the method's math: trajectories, r(s, t), w(s, t) and p(s, t), kernels, MMD estimators
    methods/    IMM and each baseline or flow map, one module each, registered by name
    networks/   the networks, one module each, registered by name; their preconditioning; official weights
    data/       data sets, latent sets larger than memory, S3
    training/   the training loop and the GPU switches
    sampling/   the samplers, a trained model ready to sample, samples as pictures
    metrics/    energy distance, FID and FD, and the evaluator the loop calls
    train.py, sample.py   `python -m imm.train`, `python -m imm.sample`: training and sampling with no cluster
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Where modules moved when imm/ was grouped into rooms. Promoted models are pickled `mlflow.pytorch` models that name
# the classes' old paths (imm.generator.Generator, imm.trajectories.OTFM, ...): each old name imports the module
# that lives at the new path, so those models (and old imports) keep loading.
MOVED = {
    "imm.trajectories": "imm.maths.trajectories",
    "imm.mapping": "imm.maths.mapping",
    "imm.weighting": "imm.maths.weighting",
    "imm.kernels": "imm.maths.kernels",
    "imm.losses": "imm.maths.estimators",
    "imm.latents": "imm.data.latents",
    "imm.remote": "imm.data.remote",
    "imm.accelerate": "imm.training.accelerate",
    "imm.convert": "imm.networks.official",
    "imm.generator": "imm.trained",
    "imm.sampling.trained": "imm.trained",
    "imm.evaluate": "imm.metrics.evaluator",
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Old module name -> the module at its new path, for every table given to `moved` (imm's, orchestrator's)."""

    table: dict[str, str] = {}

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in self.table else None

    def create_module(self, spec):
        return importlib.import_module(self.table[spec.name])  # the module itself: one set of classes, not a copy

    def exec_module(self, module) -> None:
        pass


def moved(table: dict[str, str]) -> None:
    """Make each old name in `table` import the module at its new path."""
    MovedModules.table.update(table)
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModules())  # before the path finders: an old file left on a path never shadows it


moved(MOVED)
