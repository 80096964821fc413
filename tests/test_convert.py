"""The official IMM CIFAR-10 network as model.arch=ddpmpp, and `imm-orch import` of its checkpoint.

The fixtures (tests/fixtures/make_official_fixtures.py says how) come from running the official code
(github.com/lumalabs/imm): every key and shape of its CIFAR-10 network, and a tiny network of the same layout with
random weights, an input and the official output for it.
"""

from __future__ import annotations

import io
import json
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from imm.import_official import import_official
from imm.maths.trajectories import get_trajectory
from imm.networks import OneStepModel
from imm.networks.ddpmpp import DDPMpp
from imm.networks.official import official_to_ours, read_official
from orchestrator import cli

FIXTURES = Path(__file__).parent / "fixtures"
PAPER_PARAMS = 56_061_443  # the official CIFAR-10 network (the paper's "55M")


def _tiny() -> tuple[dict, OneStepModel]:
    ref = torch.load(FIXTURES / "official_tiny.pt", weights_only=True)
    c = ref["config"]
    net = DDPMpp(3, c["img_resolution"], model_channels=c["model_channels"], channel_mult=tuple(c["channel_mult"]),
                 num_blocks=c["num_blocks"], attn_resolutions=tuple(c["attn_resolutions"]), dropout=0.0)
    return ref, OneStepModel(net, get_trajectory("ot_fm"), c["f_type"], sigma_d=c["sigma_data"]).eval()


def test_ddpmpp_reproduces_the_official_networks_output():
    """Same weights, same input, same times: f_{s,t}(x) equals the official IMMPrecond's to float precision."""
    ref, model = _tiny()
    model.load_state_dict(official_to_ours(ref["state_dict"], model))
    with torch.no_grad():
        y = model(ref["x"], ref["s"], ref["t"])
    torch.testing.assert_close(y, ref["y"], rtol=1e-5, atol=1e-5)
    assert (y - ref["y"]).abs().max() < 1e-3 * ref["y"].abs().max()  # and not by accident: outputs are O(1)
    # a wrong connection shows: drop the s-embedding branch and the output moves
    with torch.no_grad():
        model.net.map_layer1_s.weight.zero_()
        assert not torch.allclose(model(ref["x"], ref["s"], ref["t"]), ref["y"], atol=1e-3)


def _official_cifar10_state(seed: int = 0) -> OrderedDict:
    """Random values with the official network's key names and shapes (its resampling filters as they are)."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in json.loads((FIXTURES / "official_cifar10_keys.json").read_text()):
        state[key] = torch.full(shape, 0.25) if key.endswith("resample_filter") else 0.05 * torch.randn(shape, generator=g)
    return state


def test_the_paper_network_imports_key_for_key_and_keeps_f_tt_the_identity(tmp_path):
    official = _official_cifar10_state()
    path = tmp_path / "official_state.pt"
    torch.save(official, path)
    ckpt = import_official("official-cifar10", path)
    weights = ckpt["ema"]
    n_official = sum(v.numel() for k, v in official.items() if not k.endswith("resample_filter"))
    assert sum(v.numel() for k, v in weights.items() if k != "sigma_d") == n_official == PAPER_PARAMS
    for key, value in official.items():  # every weight landed, unchanged, under its new name
        if not key.endswith("resample_filter"):
            assert torch.equal(weights["net." + key[len("model."):]], value)
    from imm.trained import TrainedModel

    gen = TrainedModel.from_checkpoint(ckpt)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([0.7, 0.2])
    with torch.no_grad():
        torch.testing.assert_close(gen.model(x, t, t), x)  # f_{t,t}(x) = x with the imported weights
    assert ckpt["config"]["model"]["arch"] == "ddpmpp"
    assert ckpt["config"]["sample"]["grids"][1][1] == pytest.approx(1.4 / 2.4)  # the paper's 2-step grid


def test_a_checkpoint_of_another_network_is_refused_naming_the_difference(tmp_path):
    official = _official_cifar10_state()
    official["model.dec.32x32_aux_conv.weight"] = torch.zeros(3, 256, 5, 5)
    torch.save(official, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"model.dec.32x32_aux_conv.weight: shape \[3, 256, 5, 5\] where"):
        import_official("official-cifar10", tmp_path / "bad.pt")
    del official["model.dec.32x32_aux_conv.weight"]
    official["model.extra.weight"] = torch.zeros(1)
    torch.save(official, tmp_path / "bad2.pt")
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\) \['model.extra.weight'\], 1 missing"):
        import_official("official-cifar10", tmp_path / "bad2.pt")


def _persistence_pickle(state: dict, monkeypatch) -> bytes:
    """A pickle written the way EDM's torch_utils.persistence writes the official checkpoints: each module as
    _reconstruct_persistent_obj(meta) with its source code and its __dict__ (parameters, buffers, children)."""
    persistence, util = types.ModuleType("torch_utils.persistence"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the reader must not call the official code")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict

    class Persistent:
        def __init__(self, name):
            self.name, self.dict = name, {"_parameters": OrderedDict(), "_buffers": OrderedDict(),
                                          "_modules": OrderedDict(), "training": False,
                                          "init_kwargs": EasyDict(model_channels=8)}

        def __reduce__(self):
            meta = {"type": "class", "version": 6, "class_name": self.name, "state": self.dict,
                    "module_src": "raise SystemExit('code from the file ran')"}
            return _reconstruct_persistent_obj, (meta,)

    root = Persistent("IMMPrecond")
    for key, value in state.items():
        node, *path, leaf = [root, *key.split(".")]
        for part in path:
            node = node.dict["_modules"].setdefault(part, Persistent(part))
        group = "_buffers" if leaf == "resample_filter" else "_parameters"
        node.dict[group][leaf] = torch.nn.Parameter(value) if group == "_parameters" else value
    for name, module in (("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                         ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
        monkeypatch.setitem(sys.modules, name, module)
    data = pickle.dumps({"ema": root, "loss_fn": None, "dataset_kwargs": EasyDict(path="cifar10.zip")})
    for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
        monkeypatch.delitem(sys.modules, name)  # the reader runs where the official code is not importable
    return data


def test_the_official_pickle_format_is_read_without_the_official_code(tmp_path, monkeypatch):
    ref, model = _tiny()
    path = tmp_path / "cifar10.pt"
    path.write_bytes(_persistence_pickle(ref["state_dict"], monkeypatch))
    got = read_official(path)
    assert set(got) == set(ref["state_dict"])
    assert all(torch.equal(got[k], ref["state_dict"][k]) for k in got)
    model.load_state_dict(official_to_ours(got, model))
    with torch.no_grad():
        torch.testing.assert_close(model(ref["x"], ref["s"], ref["t"]), ref["y"], rtol=1e-5, atol=1e-5)


def test_imm_orch_import_writes_a_checkpoint_that_eval_and_sample_read(tmp_path, capsys):
    torch.save(_official_cifar10_state(), tmp_path / "official.pt")
    out = tmp_path / "imported"
    assert cli.main(["import", "--from", "official-cifar10", str(tmp_path / "official.pt"), "--out", str(out),
                     "eval.features=none"]) == 0
    printed = capsys.readouterr().out
    assert f"{PAPER_PARAMS:,} parameters" in printed and "imm-orch eval --model" in printed
    from imm.trained import load_trained

    gen = load_trained(out)
    assert gen.cfg.eval.features == "none" and gen.sample(2, steps=2).shape == (2, 3, 32, 32)
    assert cli.main(["import", "--from", "official-cifar100", str(tmp_path / "official.pt"), "--out", str(out)]) == 2
    assert ("--from: 'official-cifar100' is not one of ['official-cifar10', 'official-imagenet256-ts-a2', "
            "'official-imagenet256-s-a1']") in capsys.readouterr().err
    assert cli.main(["import", "--from", "official-cifar10", str(tmp_path / "nope.pt"), "--out", str(out)]) == 2
    assert "no file at" in capsys.readouterr().err


@pytest.mark.parametrize("source, s_embedding, a", [("official-imagenet256-ts-a2", "stride", 2),
                                                     ("official-imagenet256-s-a1", "identity", 1)])
def test_the_official_imagenet_dit_imports_key_for_key(tmp_path, source, s_embedding, a):
    """The released ImageNet-256 files hold the official DiT, whose keys are ours under `model.` (the XL/2 key
    fixture, tests/test_dit.py); here a DiT-S/2 with random weights under those names stands in for XL/2's 2.7 GB."""
    from imm.networks.dit import DiT
    from imm.trained import TrainedModel

    torch.manual_seed(0)
    net = DiT.named("S/2", 4, 32, num_classes=1000)
    for p in net.parameters():  # adaLN-Zero starts at zero: fill everything, as a trained network would be
        torch.nn.init.normal_(p, std=0.02)
    official = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save(official, tmp_path / "imagenet256.pt")
    ckpt = import_official(source, tmp_path / "imagenet256.pt", ["model.dit=S/2"])
    for key, value in official.items():
        assert torch.equal(ckpt["ema"]["net." + key[len("model."):]], value)
    cfg = ckpt["config"]
    assert (cfg["model"]["arch"], cfg["model"]["s_embedding"], cfg["imm"]["a"]) == ("dit", s_embedding, a)
    assert ckpt["num_classes"] == 1000 and ckpt["data_shape"] == [4, 32, 32] and cfg["sample"]["cfg_scale"] == 1.5
    gen = TrainedModel.from_checkpoint(ckpt)
    x, t, labels = torch.randn(2, 4, 32, 32), torch.tensor([0.7, 0.2]), torch.tensor([3, 1000])  # 1000: null
    with torch.no_grad():
        torch.testing.assert_close(gen.model(x, t, t, labels), x)  # f_{t,t}(x) = x
        assert not torch.allclose(gen.model(x, t, t * 0.5, labels), x)  # and the weights act elsewhere
    with pytest.raises(ValueError, match=r"^model.pos_embed: shape \[1, 256, 384\] where model.arch=dit has "
                                         r"\[1, 256, 768\]; the checkpoint's network is not the configured one"):
        import_official(source, tmp_path / "imagenet256.pt", ["model.dit=B/2"])


def _crafted(tmp_path, route: str) -> tuple[Path, Path]:
    """An 'official checkpoint' that runs code when read by an unpickler that trusts whole packages: through
    numpy (`numpy.testing._private.utils.runstring` execs a string) or through torch (a tensor storage's bytes,
    which `torch.storage._load_from_bytes` reads with torch.load(weights_only=False), naming `exec`). Its marker
    file, if it exists afterwards, is the proof that code ran."""
    marker = tmp_path / f"ran-{route}"
    code = f"open({str(marker)!r}, 'w').write('code from the file ran')"

    class Exec:
        def __reduce__(self):
            return exec, (code,)

    if route == "numpy":
        from numpy.testing._private.utils import runstring

        class Payload:
            def __reduce__(self):
                return runstring, (code, {})
    else:
        buf = io.BytesIO()
        torch.save(Exec(), buf)

        class Payload:
            def __reduce__(self):
                return torch.storage._load_from_bytes, (buf.getvalue(),)

    path = tmp_path / f"crafted-{route}.pkl"
    path.write_bytes(pickle.dumps({"ema": {"weight": Payload()}}))
    return path, marker


@pytest.mark.parametrize("route", ["numpy", "torch"])
def test_a_crafted_official_checkpoint_runs_nothing(tmp_path, route, capsys):
    """The reader allowed every global under `torch.*` and `numpy.*`; both hold functions that run a
    string, and `imm-orch import` of either crafted file ran its payload. Now only exact (module, name) pairs."""
    path, marker = _crafted(tmp_path, route)
    try:
        pickle.loads(path.read_bytes())  # the file is what it claims: a trusting reader runs its payload
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()
    assert cli.main(["import", "--from", "official-cifar10", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), "code from the file ran"
    assert err.startswith("imm-orch: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
