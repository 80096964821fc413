"""Issue 25: a network is one file, a command is one file. A toy network and a toy `imm-orch` command, each written
in one new module outside the package (in a temporary folder, imported in process), register themselves; the
network gets its own config section, trains and samples, and the command, found through the command table, builds
that network from a config given on its command line. Nothing in the package is edited."""

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


TOY_COMMAND = '''
"""`imm-orch params CONFIG key=value ...`: the network a config builds, and its parameter count."""
from orchestrator import terminal
from orchestrator.commands import Command, output_flags, overrides_arg, register


def arguments(parser):
    parser.add_argument("config", help="a YAML config file or a built-in config name")
    overrides_arg(parser, "dotted config overrides")
    output_flags(parser)


def run(args):
    from imm.config import load_config
    from imm.methods import build_model

    cfg = load_config(args.config, args.overrides)
    net = build_model(cfg, (2,), 1.0).net
    print(f"{cfg.model.arch}: {type(net).__name__}, {sum(p.numel() for p in net.parameters())} parameters",
          file=terminal.out())
    return 0


COMMAND = register(Command("params", help="the network a config builds and its size", description=__doc__,
                           examples="example:\\n  imm-orch params toy2d model.arch=mlp\\n", arguments=arguments,
                           run=run, overrides=True))
'''


def _import_from(folder, name: str, source: str):
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


@pytest.fixture
def toy_network(tmp_path):
    try:
        yield _import_from(tmp_path, "toy_network", TOY_NETWORK)
    finally:
        sys.modules.pop("toy_network", None)
        ARCHITECTURES.pop("toy", None)


@pytest.fixture
def toy_command(tmp_path):
    from orchestrator.commands import COMMANDS

    try:
        yield _import_from(tmp_path, "toy_command", TOY_COMMAND)
    finally:
        sys.modules.pop("toy_command", None)
        COMMANDS.pop("params", None)


def test_a_network_in_one_new_file_trains_and_samples_with_its_own_config_section(toy_network):
    from imm.methods import generate
    from imm.training.loop import train_loop

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


def test_a_command_in_one_new_file_is_found_by_the_cli_and_builds_the_toy_network(toy_network, toy_command, capsys):
    from orchestrator import cli

    assert cli.main(["params", "toy2d", "model.arch=toy", "model.toy.width=5"]) == 0
    # Linear(2 + 2, 5) and Linear(5, 2): 4*5 + 5 + 5*2 + 2 weights and biases
    assert capsys.readouterr().out == "toy: Toy, 37 parameters\n"
    with pytest.raises(SystemExit):  # its own help, with its examples, from the table
        cli.main(["params", "--help"])
    assert "imm-orch params toy2d model.arch=mlp" in capsys.readouterr().out
    assert cli.main(["params", "toy2d", "model.toy.width=0x"]) == 2  # the CLI's error policy applies to it
    assert capsys.readouterr().err.startswith("imm-orch: error: model.toy.width")
