"""Issue 25: a network is one file. A toy network written in one new module outside the package (in a temporary
folder, imported in process) registers itself, gets its own config section, trains and samples; nothing in the
package is edited."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

from imm.config import ConfigError, load_config
from imm.networks import ARCHITECTURES

TOY_NETWORK = '''
"""A toy network: one linear layer on the flattened data and the two time inputs."""
import math
from dataclasses import dataclass

import torch
from torch import nn

from imm.networks import Architecture, register


@dataclass
class ToyConfig:
    width: int = 8


class Toy(nn.Module):
    def __init__(self, dim, width, num_classes=0):
        super().__init__()
        self.num_classes = num_classes
        self.inp, self.out = nn.Linear(dim + 2, width), nn.Linear(width, dim)

    def forward(self, x, c_t, c_s, labels=None):
        h = torch.cat([x.flatten(1), c_t[:, None] / 1000, c_s[:, None] / 1000], dim=1)
        return self.out(torch.tanh(self.inp(h))).view_as(x)


ARCH = register(Architecture("toy", "one hidden layer", images=False, channels_last=False, config=ToyConfig,
                             build=lambda m, shape, classes: Toy(math.prod(shape), m.toy.width, classes)))
'''


@pytest.fixture
def toy_network(tmp_path):
    (tmp_path / "toy_network.py").write_text(textwrap.dedent(TOY_NETWORK))
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("toy_network")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("toy_network", None)
        ARCHITECTURES.pop("toy", None)


def test_a_network_in_one_new_file_trains_and_samples_with_its_own_config_section(toy_network):
    from imm.methods import generate
    from imm.train import train_loop

    cfg = load_config("toy2d", ["model.arch=toy", "model.toy.width=12", "train.steps=20", "train.log_every=10",
                                "eval.every=20", "eval.n_samples=100", "eval.steps=[1]", "train.batch_size=64",
                                "train.checkpoint_every=20"])
    reports = []
    metrics = train_loop(cfg, report=lambda m, ckpt: reports.append(ckpt))
    assert metrics["step"] == 20 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    from imm.methods import build_model

    model = build_model(cfg, (2,), 1.0)
    assert isinstance(model.net, toy_network.Toy) and model.net.inp.out_features == 12
    assert generate(model, cfg, 16, 2, data_shape=(2,)).shape == (16, 2)
    with pytest.raises(ConfigError, match="model.arch: 'toy2' is not one of"):
        load_config("toy2d", ["model.arch=toy2"])


def test_the_built_in_networks_are_registered_with_what_they_need():
    assert {"mlp", "unet", "ddpmpp", "dit"} <= set(ARCHITECTURES)
    assert not ARCHITECTURES["mlp"].images and ARCHITECTURES["ddpmpp"].images
    with pytest.raises(ConfigError, match=r"model.arch: unet needs square images \(C, H, H\)"):
        from imm.methods import build_model

        build_model(load_config("toy2d", ["model.arch=unet"]), (2,), 1.0)
