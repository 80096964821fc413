"""DiT with the official IMM ImageNet network's layer structure (`model.arch=dit`).

The fixtures come from running the official code (tests/fixtures/make_official_fixtures.py): every key and shape of
its DiT-XL/2 for 4x32x32 latents and 1000 classes, and a tiny class-conditional DiT with random weights, inputs and
its output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imm.config import load_config
from imm.maths.trajectories import get_trajectory
from imm.methods import build_model
from imm.networks import OneStepModel
from imm.networks.dit import NAMES, DiT, parse_size
from imm.networks.precond import PARAMETERIZATIONS, guided

FIXTURES = Path(__file__).parent / "fixtures"
PUBLISHED = {"S/2": 33.0e6, "B/2": 130.3e6, "L/2": 458.1e6, "XL/2": 675.1e6}  # DiT's table 1 (Gflops table), 256px


def test_the_official_tiny_dit_output_is_reproduced_exactly():
    ref = torch.load(FIXTURES / "official_dit_tiny.pt", weights_only=True)
    c = ref["config"]
    net = DiT(c["channels"], c["resolution"], c["hidden"], c["depth"], c["heads"], c["patch"], c["num_classes"])
    net.load_state_dict({k[len("model."):]: v for k, v in ref["state_dict"].items()})
    model = OneStepModel(net, get_trajectory("ot_fm"), "euler_fm", sigma_d=c["sigma_data"], s_embedding="stride")
    with torch.no_grad():
        y = model.eval()(ref["x"], ref["s"], ref["t"], ref["labels"])  # labels: 3, 0, 9 and the null label 10
    torch.testing.assert_close(y, ref["y"], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # a wrong label convention shows: the null label's row moved
        net.y_embedder.embedding_table.weight[10] += 1
        assert not torch.allclose(model(ref["x"], ref["s"], ref["t"], ref["labels"]), ref["y"], atol=1e-3)


def test_dit_xl2_has_the_official_keys_and_shapes_and_the_fixed_position_embedding():
    with torch.device("meta"):
        net = DiT.named("XL/2", 4, 32, num_classes=1000)
    official = {k[len("model."):]: v for k, v in json.loads((FIXTURES / "official_dit_xl2_keys.json").read_text())}
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == official
    small = DiT(4, 8, hidden=16, depth=1, heads=2, patch=2)
    pe = small.pos_embed[0]  # (16 tokens, 16): token (row 0, col 1) has col 1 in the first half, row 0 in the second
    assert torch.allclose(pe[1, :4], torch.tensor([1.0, 0.1, 0.01, 0.001]).mul(1).sin(), atol=1e-6)
    assert torch.allclose(pe[1, 8:12], torch.zeros(4)) and not small.pos_embed.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_every_named_size_builds_with_dits_published_parameter_count(name, capsys):
    with torch.device("meta"):
        net = DiT.named(name, 4, 32, num_classes=1000)
    n = sum(p.numel() for p in net.parameters())
    hidden, depth, heads, patch = parse_size(name)
    s_embedder = 256 * hidden + hidden * hidden + 2 * hidden  # IMM's second time embedding, not in DiT's count
    if name in PUBLISHED:
        assert abs(n - s_embedder - PUBLISHED[name]) / PUBLISHED[name] < 0.005, (name, n)
    print(f"DiT-{name}: {n / 1e6:.1f}M parameters (DiT's table: {PUBLISHED.get(name, float('nan')) / 1e6:.1f}M + "
          f"the s embedding {s_embedder / 1e6:.2f}M)")


def _random_dit(param: str, seed: int = 0) -> OneStepModel:
    torch.manual_seed(seed)
    net = DiT(4, 8, hidden=32, depth=2, heads=4, patch=2, num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return OneStepModel(net, get_trajectory("ot_fm"), param, sigma_d=0.5).double()


def test_adaln_zero_makes_the_output_exactly_zero_at_init():
    torch.manual_seed(0)
    net = DiT(4, 16, hidden=32, depth=3, heads=4, patch=4, num_classes=10)
    g = net(torch.randn(3, 4, 16, 16), torch.tensor([900.0, 10, 500]), torch.tensor([100.0, 0, 5]), torch.tensor([1, 10, 3]))
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
def test_f_tt_is_the_identity_with_dit(param):
    model = _random_dit(param)
    x, t = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.tensor([0.9, 0.4, 0.01], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, t, torch.tensor([0, 5, 10])), x)


def test_cfg_scale_one_is_the_conditional_model_and_w_extrapolates_from_the_null_label():
    net = _random_dit("euler_fm").net
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    c_t, c_s = torch.tensor([500.0, 100.0], dtype=torch.float64), torch.tensor([10.0, 50.0], dtype=torch.float64)
    args, labels = (x, c_t, c_s), torch.tensor([2, 7])
    with torch.no_grad():
        cond, null = net(*args, labels), net(*args, torch.full_like(labels, 10))
        torch.testing.assert_close(guided(net, args, labels, 1.0), cond)
        torch.testing.assert_close(guided(net, args, labels, 1.5), null + 1.5 * (cond - null))
        assert not torch.allclose(cond, null)


def test_a_small_dit_trains_and_samples_on_cpu(tmp_path):
    """model.arch=dit through the config, class-conditional, on digits (a stand-in for latents until they land)."""
    from imm.train import train
    from imm.trained import load_trained

    cfg = load_config("digits", ["model.arch=dit", "model.dit=S/4", "model.class_conditional=true", "train.steps=6",
                                 "train.batch_size=16", "eval.every=6", "eval.n_samples=20", "eval.features=none",
                                 "eval.steps=[1,2]", "train.checkpoint_every=6", f"train.out_dir={tmp_path}"])
    metrics = train(cfg, stream=open(tmp_path / "log.txt", "w"))  # noqa: SIM115
    assert torch.isfinite(torch.tensor(metrics["train/loss"])) and "energy/steps_2" in metrics
    gen = load_trained(tmp_path)
    assert isinstance(gen.model.net, DiT) and gen.sample(4, steps=2, label=3).shape == (4, 1, 8, 8)
    assert isinstance(build_model(cfg, (1, 8, 8), 0.5, 10).net, DiT)
