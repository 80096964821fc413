"""imm/ was grouped into rooms; promoted models are pickled `mlflow.pytorch` models that name the classes'
old module paths. A model pickled under those paths (imm.generator.Generator, imm.trajectories.OTFM, ...) loads in a
fresh process, and the old import names give the very modules that live at the new paths."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from imm import MOVED
from imm.config import load_config
from imm.methods import build_model
from imm.trained import TrainedModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_is_the_module_at_its_new_path(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


# Two old layouts: the first (imm.generator.Generator, imm.trajectories.OTFM, ...) and the first rooms
# (imm.sampling.trained.TrainedModel), before a trained model moved above the config it loads.
LAYOUTS = {
    "first": ({new: old for old, new in MOVED.items() if old != "imm.sampling.trained"}, "Generator",
              [b"imm.generator", b"imm.trajectories"]),
    "rooms": ({"imm.trained": "imm.sampling.trained"}, "TrainedModel", [b"imm.sampling.trained"]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_model_pickled_under_the_old_module_paths_loads_in_a_fresh_process(tmp_path, layout):
    old_of, name, named = LAYOUTS[layout]
    cfg = load_config("toy2d", ["model.hidden=16", "model.depth=2"])
    gen = TrainedModel(build_model(cfg, (2,), 1.0), OmegaConf.to_container(cfg, resolve=True), (2,))
    # Pickle as the promoted models of the old layout were: every class of a moved module under the module's old
    # name, and TrainedModel under its name then.
    renamed = [(value, value.__module__, value.__qualname__) for new in old_of
               for value in vars(importlib.import_module(new)).values()
               if isinstance(value, type) and value.__module__ == new]
    try:
        for cls, module, _ in renamed:
            cls.__module__ = old_of[module]
        TrainedModel.__qualname__ = name
        path = tmp_path / "old_model.pt"
        torch.save(gen, path)
    finally:
        for cls, module, qualname in renamed:
            cls.__module__, cls.__qualname__ = module, qualname
    data = path.read_bytes()
    assert all(n in data for n in named) and b"imm.trained" not in data
    expected = gen.sample(5, 2, seed=3)
    code = ("import sys, torch; g = torch.load(sys.argv[1], weights_only=False); "
            "print(type(g).__module__, type(g.model.traj).__module__); torch.save(g.sample(5, 2, seed=3), sys.argv[2])")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.pt")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["imm.trained", "imm.maths.trajectories"]
    assert torch.equal(torch.load(tmp_path / "x.pt"), expected)
