"""Layers on forward-mode dual numbers with a gradient: TVM trains through a JVP of the whole network, where
PyTorch's scaled_dot_product_attention fails (no forward-AD rule in its CPU flash kernel; its math path's softmax
rule breaks the backward pass) and so does group_norm on a non-contiguous input. imm.networks.dual works around
both; TVM now trains on every network with attention (DDPM++ failed before)."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.nn import functional as F

from imm.config import load_config
from imm.methods import build_loss, build_model
from imm.networks.dual import attention


def test_on_dual_inputs_it_is_attention_and_its_derivative_and_it_trains_through_them():
    g = torch.Generator().manual_seed(0)
    q, k, v, dq, dk, dv = (torch.randn(2, 3, 10, 8, generator=g, dtype=torch.float64) for _ in range(6))
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))  # plain inputs: SDPA itself
    w = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)  # a weight before the attention

    def sdpa(e: float):  # along the line (q, k, v) + e (dq, dk, dv)
        return F.scaled_dot_product_attention((q + e * dq) @ w, (k + e * dk) @ w, (v + e * dv) @ w)

    with fwAD.dual_level():
        out = fwAD.unpack_dual(attention(*(fwAD.make_dual(a @ w, d @ w) for a, d in ((q, dq), (k, dk), (v, dv)))))
    h = 1e-6
    with torch.no_grad():
        assert torch.allclose(out.primal, sdpa(0.0))
        assert torch.allclose(out.tangent, (sdpa(h) - sdpa(-h)) / (2 * h), atol=1e-7)
    (out.primal.sum() + out.tangent.square().sum()).backward()
    assert w.grad is not None and bool(torch.isfinite(w.grad).all()) and float(w.grad.abs().max()) > 0


NETS = {  # each network with attention, at test size
    "unet": ("cifar10", ["model.arch=unet", "model.channels=16", "model.channel_mult=[1,2]", "model.num_blocks=1",
                         "model.attn_resolutions=[8]"], (3, 16, 16)),
    "ddpmpp": ("cifar10", ["model.channels=16", "model.num_blocks=1", "model.channel_mult=[1,2]",
                           "model.attn_resolutions=[8]"], (3, 16, 16)),
    "dit": ("imagenet256_dit", ["model.dit=S/2", "model.depth=1"], (4, 8, 8)),
}


@pytest.mark.parametrize("net", sorted(NETS))
def test_tvm_trains_through_each_network_with_attention(net):
    config, overrides, shape = NETS[net]
    cfg = load_config(config, [*overrides, "method=tvm", "model.dropout=0"])
    torch.manual_seed(0)
    model = build_model(cfg, shape, 0.5, 0)
    with torch.no_grad():  # the zero-initialised output layers would leave the attention without a gradient
        for p in model.parameters():
            if p.ndim and float(p.abs().max()) == 0:
                p.normal_(0, 0.05)
    build_loss(cfg)(model, torch.randn(4, *shape) * 0.5).backward()
    attn = [n for n, p in model.named_parameters() if "qkv" in n and p.grad is not None and float(p.grad.abs().max())]
    assert attn, "no gradient reached an attention layer"
