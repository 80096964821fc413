"""train.teacher: a trained velocity model that a distilling loss asks for v(z, t) in place of the data's eps - x.

The teacher is a trained model (imm.trained.TrainedModel), loaded once per worker by whoever starts the loop (from
a checkpoint path in `python -m imm.train`), frozen and in eval mode. It must
describe the same data as the student (shape, sigma_d, trajectory, classes); the networks may differ.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor

from imm.checks import ConfigError
from imm.methods import METHODS


class Teacher:
    """`velocity(z, t, labels)`: the teacher's instantaneous velocity; its weights never train, and a gradient flows
    to its input only where asked (grad=True: Lagrangian map distillation differentiates through v_T(X(z), s))."""

    def __init__(self, trained, device: str | torch.device = "cpu"):
        method = trained.config["method"]
        self._velocity = METHODS[method].velocity
        self.model = trained.model.to(device).eval().requires_grad_(False)

    def velocity(self, z: Tensor, t: Tensor, labels: Tensor | None = None, grad: bool = False) -> Tensor:
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self._velocity(self.model, z, t, labels).to(z.dtype)


def check_teacher(cfg: DictConfig, trained, data_shape: tuple[int, ...] | None = None, sigma_d: float | None = None,
                  num_classes: int | None = None) -> None:
    """One-line ConfigError unless `trained` can teach the run `cfg`: a method with a velocity, the student's
    trajectory, data set and conditioning, and (where known) its data shape, sigma_d and number of classes."""
    theirs = trained.config
    where = f"train.teacher: {cfg.train.teacher}"
    if METHODS.get(theirs["method"]) is None or METHODS[theirs["method"]].velocity is None:
        raise ConfigError(f"{where} is a method={theirs['method']} model, which has no velocity to distill; the "
                         f"methods that do: {[m.name for m in METHODS.values() if m.velocity]}")
    if theirs["trajectory"] != cfg.trajectory:
        raise ConfigError(f"{where} was trained on trajectory={theirs['trajectory']}, this run on {cfg.trajectory}")
    if bool(trained.num_classes) != bool(cfg.model.class_conditional):
        kind = "class-conditional" if trained.num_classes else "unconditional"
        raise ConfigError(f"{where} is {kind} and this run has model.class_conditional={cfg.model.class_conditional}")
    if theirs["data"]["name"] != cfg.data.name:
        raise ConfigError(f"{where} was trained on data.name={theirs['data']['name']}, this run on {cfg.data.name}")
    pairs = (("data shape", tuple(trained.data_shape), None if data_shape is None else tuple(data_shape)),
             ("sigma_d", None if trained.sigma_d is None else round(float(trained.sigma_d), 6),
              None if sigma_d is None else round(float(sigma_d), 6)),
             ("classes", trained.num_classes, num_classes))
    for what, a, b in pairs:
        if a is not None and b is not None and a != b:
            raise ConfigError(f"{where} has {what} {a}, this run's data {b}")
