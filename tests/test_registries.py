"""A network, a command, a sampler and a schedule are each one file (a method is: tests/test_method_registry.py).
Each toy here is written in one new module outside the package (in a temporary folder, imported in process) and
registers itself: the network gets its own config section, trains and samples; the command, found through the
command table, builds that network from a config given on its command line; the sampler and the schedule become
allowed config values and sample. Nothing in the package is edited."""

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
from imm.config import load_config
from orchestrator import terminal
from orchestrator.commands import Command, output_flags, overrides_arg, register


def arguments(parser):
    parser.add_argument("config", help="a YAML config file or a built-in config name")
    overrides_arg(parser, "dotted config overrides")
    output_flags(parser)


def run(args):
    from imm.methods import build_model

    cfg = load_config(args.config, args.overrides)
    net = build_model(cfg, (2,), 1.0).net
    print(f"{cfg.model.arch}: {type(net).__name__}, {sum(p.numel() for p in net.parameters())} parameters",
          file=terminal.out())
    return 0


COMMAND = register(Command("params", help="the network a config builds and its size", description=__doc__,
                           examples="example:\\n  imm-orch params toy2d model.arch=mlp\\n", arguments=arguments,
                           run=run, overrides=True,
                           # it says where its log goes: the CLI announces the file, under the config's storage.root
                           log_root=lambda args: load_config(args.config, args.overrides).storage.root))
'''


TOY_SAMPLER = '''
"""Flow matching's explicit midpoint method: two velocity evaluations per step, second order."""
import torch

from imm.sampling import Sampler, register_sampler
from imm.sampling.maps import batch_times


@torch.no_grad()
def midpoint(model, x, grid, generator=None):
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        h = float(t_next - t)
        x_mid = x + 0.5 * h * model(x, batch_times(t, x))
        x = x + h * model(x_mid, batch_times(t + 0.5 * h, x))
    return x


SAMPLER = register_sampler(Sampler("midpoint", "velocity", "the explicit midpoint method", midpoint))
'''


TOY_SCHEDULE = '''
"""Times spaced quadratically: t_i = eps_t + (T - eps_t) (1 - i / N)^2, fine near the data."""
import torch

from imm.sampling import Schedule, register_schedule


def quadratic(steps, traj, eps_t, T, rho):
    i = torch.arange(steps + 1, dtype=torch.float64) / steps
    return eps_t + (T - eps_t) * (1 - i) ** 2


SCHEDULE = register_schedule(Schedule("quadratic", "fine near the data", quadratic))
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


@pytest.fixture
def toy_sampler_and_schedule(tmp_path):
    from imm.sampling import SAMPLERS, SCHEDULES

    try:
        yield _import_from(tmp_path, "toy_sampler", TOY_SAMPLER), _import_from(tmp_path, "toy_schedule", TOY_SCHEDULE)
    finally:
        sys.modules.pop("toy_sampler", None)
        sys.modules.pop("toy_schedule", None)
        SAMPLERS.pop(("velocity", "midpoint"), None)
        SCHEDULES.pop("quadratic", None)


def test_a_sampler_and_a_schedule_in_one_new_file_each_are_config_values_and_sample(toy_sampler_and_schedule):
    from imm.sampling import generate, samplers_for, time_grid
    from imm.sampling.velocity import euler

    assert samplers_for("fm") == ("euler", "heun", "midpoint") and "midpoint" not in samplers_for("imm")
    cfg = load_config("toy2d", ["method=fm", "sample.sampler=midpoint", "sample.schedule=quadratic",
                                "model.hidden=16", "model.depth=1"])
    with pytest.raises(ConfigError, match=r"sample.sampler: 'midpoint' does not apply to method=imm; choose one of "
                                          r"\['pushforward', 'restart'\]"):
        load_config("toy2d", ["sample.sampler=midpoint"])
    with pytest.raises(ConfigError, match=r"sample.schedule: 'cubic' is not one of \[None, 'uniform', 'eta', "
                                          r"'half_eta', 'quadratic'\]"):
        load_config("toy2d", ["sample.schedule=cubic"])
    from imm.maths.trajectories import get_trajectory

    grid = time_grid(4, get_trajectory("ot_fm"), 0.0, 0.994, "quadratic")
    assert torch.allclose(grid, 0.994 * torch.tensor([1.0, 0.5625, 0.25, 0.0625, 0.0], dtype=torch.float64))
    # a linear field v(x, t) = a x: the midpoint step multiplies x by 1 + a h + (a h)^2 / 2, Euler's by 1 + a h
    from imm.methods import build_model

    model = build_model(cfg, (2,), 1.0)

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.traj, self.sigma_d = model.traj, model.sigma_d

        def forward(self, x, t, labels=None):
            return 0.5 * x

    lin = Linear()
    x = generate(lin, cfg, 3, 4, seed=1, data_shape=(2,))
    x0 = torch.randn((3, 2), generator=torch.Generator().manual_seed(1)) * float(model.sigma_d)
    hs = (grid[1:] - grid[:-1]).tolist()
    want = x0 * torch.tensor([1 + 0.5 * h + (0.5 * h) ** 2 / 2 for h in hs]).prod()
    assert torch.allclose(x, want, atol=1e-6)
    assert not torch.allclose(euler(lin, x0, grid), want, atol=1e-4)


def test_a_network_in_one_new_file_trains_and_samples_with_its_own_config_section(toy_network):
    from imm.sampling import generate
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


def test_a_command_in_one_new_file_is_found_by_the_cli_and_builds_the_toy_network(toy_network, toy_command, capsys,
                                                                                    tmp_path):
    from orchestrator import cli

    assert cli.main(["params", "toy2d", "model.arch=toy", "model.toy.width=5", f"storage.root={tmp_path}"]) == 0
    # Linear(2 + 2, 5) and Linear(5, 2): 4*5 + 5 + 5*2 + 2 weights and biases
    assert capsys.readouterr().out == "toy: Toy, 37 parameters\n"
    # the log file `imm-orch params` announces lies under the storage.root its log_root names
    args = cli.parse_args(["params", "toy2d", "model.arch=toy", f"storage.root={tmp_path}"])
    assert cli.log_file(args).parent == tmp_path.resolve() / "logs"
    with pytest.raises(SystemExit):  # its own help, with its examples, from the table
        cli.main(["params", "--help"])
    assert "imm-orch params toy2d model.arch=mlp" in capsys.readouterr().out
    assert cli.main(["params", "toy2d", "model.toy.width=0x"]) == 2  # the CLI's error policy applies to it
    assert capsys.readouterr().err.startswith("imm-orch: error: model.toy.width")
