"""The DDPM++-style U-Net: shapes, zero-initialised output, t / s / label conditioning, gradients, GroupNorm groups."""

import pytest
import torch

from imm.networks.unet import UNet, num_groups


def _tiny(in_channels=1, resolution=8, **kw):
    torch.manual_seed(0)
    return UNet(in_channels, resolution, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                attn_resolutions=(resolution // 2,), **kw)


def _perturb(net, seed=1):
    """Random weights everywhere, so no zero-initialised layer hides a missing dependence."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net


def _inputs(b, c, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(b, generator=g)
    return torch.randn(b, c, r, r, generator=g), 1000 * t, 1000 * t * torch.rand(b, generator=g)


@pytest.mark.parametrize("c,r,b", [(1, 8, 1), (1, 8, 3), (3, 16, 1), (3, 16, 2)])
def test_output_shape(c, r, b):
    net = _perturb(_tiny(c, r))
    x, ct, cs = _inputs(b, c, r)
    out = net(x, ct, cs)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_zero_init_output_then_t_and_s_dependence():
    net = _tiny()
    x, ct, cs = _inputs(4, 1, 8)
    assert torch.equal(net(x, ct, cs), torch.zeros_like(x))
    with torch.no_grad():
        net.out.weight.normal_(0, 0.1)
    out = net(x, ct, cs)
    assert out.abs().max() > 1e-3
    # residual branches are still zero, so the times cannot reach the output yet: every block starts as its skip path
    torch.testing.assert_close(net(x, ct + 100, cs + 100), out)
    _perturb(net)
    out = net(x, ct, cs)
    assert (net(x, ct + 100, cs) - out).abs().max() > 1e-4  # only t changed
    assert (net(x, ct, cs + 100) - out).abs().max() > 1e-4  # only s changed
    # t and s are embedded separately: swapping them changes the output
    assert (net(x, cs, ct) - out).abs().max() > 1e-4


def test_class_labels_and_null_label():
    net = _perturb(_tiny(num_classes=10))
    net.eval()
    x, ct, cs = _inputs(4, 1, 8)
    three, null = torch.full((4,), 3), torch.full((4,), 10)
    assert (net(x, ct, cs, three) - net(x, ct, cs, null)).abs().max() > 1e-4
    torch.testing.assert_close(net(x, ct, cs), net(x, ct, cs, null), rtol=0, atol=0)
    assert net.num_classes == 10  # read by precond.guided to build the null labels


def test_gradients_reach_every_parameter():
    net = _perturb(_tiny(num_classes=10, dropout=0.2))
    x, ct, cs = _inputs(3, 1, 8)
    net(x, ct, cs, torch.tensor([0, 5, 10])).pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("channels,groups", [(8, 2), (16, 4), (24, 6), (48, 12), (256, 32), (3, 1)])
def test_group_norm_groups(channels, groups):
    assert num_groups(channels) == groups and channels % groups == 0
    torch.nn.GroupNorm(num_groups(channels), channels)(torch.randn(2, channels, 2, 2))


def test_paper_config_size():
    """DDPM++ CIFAR-10 (128 channels, mults 2-2-2, 4 blocks): ~55M parameters (built on the meta device: no memory)."""
    with torch.device("meta"):
        net = UNet(3, 32, 128, (2, 2, 2), 4, (16,), 0.2)
    assert 50e6 < sum(p.numel() for p in net.parameters()) < 60e6


def test_rejects_unhalvable_resolution():
    with pytest.raises(ValueError):
        UNet(1, 6, model_channels=16, channel_mult=(1, 2, 2))


@pytest.mark.parametrize("parameterization", ["simple_edm", "euler_fm", "identity"])
def test_the_unet_one_step_model_is_the_identity_at_s_equal_t_and_guidance_one_is_the_conditional_model(
        parameterization):
    from imm.config import load_config
    from imm.methods import build_model

    cfg = load_config("digits", ["model.arch=unet", "model.channels=16", "model.channel_mult=[1,2]",
                                 "model.num_blocks=1", "model.attn_resolutions=[4]", "model.class_conditional=true",
                                 f"model.parameterization={parameterization}"])
    torch.manual_seed(0)
    model = build_model(cfg, (1, 8, 8), 0.5, num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # leave the zero-initialised start behind
    x, t, s = torch.randn(4, 1, 8, 8), torch.tensor([0.9, 0.5, 0.3, 0.99]), torch.tensor([0.1, 0.2, 0.0, 0.5])
    y = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        assert torch.allclose(model(x, t, t, labels=y, cfg_scale=2.0), x, atol=1e-5)
        cond = model(x, s, t, labels=y)
        assert torch.allclose(model(x, s, t, labels=y, cfg_scale=1.0), cond)
        assert not torch.allclose(cond, model(x, s, t, labels=torch.full_like(y, 10)))
        assert not torch.allclose(cond, x, atol=1e-3)
