"""DDPM++ with the official IMM network's layer structure (`model.arch=ddpmpp`), so its CIFAR-10 weights load.

The layout is EDM's `SongUNet` in its DDPM++ setting as the IMM authors use it (github.com/lumalabs/imm,
training/unets.py): positional time embeddings (cos/sin swapped to sin/cos), a second embedding for s added to
t's, 2x2 box-filter resampling inside the residual blocks, one attention head where the resolution is listed,
skip scale sqrt(1/2), GroupNorm eps 1e-6. Module and parameter names follow theirs (enc/dec ModuleDicts with keys
like `32x32_block0`, norm0/conv0/affine/norm1/conv1/skip/norm2/qkv/proj, map_layer0, map_layer0_s, ...), so an
official state dict maps onto this one key for key (imm/networks/official.py). Only the constant resampling-filter buffers
are not kept: with the [1, 1] filter, down- and upsampling are 2x2 average pooling and nearest upsampling.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from imm.networks.dual import GroupNorm, attention
from imm.networks.registry import Architecture, register
from imm.networks.unet import zero_init

SKIP_SCALE = math.sqrt(0.5)


def group_norm(channels: int) -> GroupNorm:
    """The official GroupNorm: min(32, channels // 4) groups, eps 1e-6."""
    return GroupNorm(min(32, channels // 4), channels, eps=1e-6)


def positional_embedding(x: Tensor, channels: int, max_positions: int = 10000) -> Tensor:
    """[sin(x f_i), cos(x f_i)] with f_i = max_positions^(-i / (channels/2 - 1)), i < channels/2 (endpoint=True);
    the phases in float64, as the official code computes them (c_noise reaches 1000)."""
    half = channels // 2
    freqs = (1 / max_positions) ** (torch.arange(half, dtype=torch.float64, device=x.device) / (half - 1))
    arg = torch.outer(x.double(), freqs)
    return torch.cat([arg.sin(), arg.cos()], dim=1).to(x.dtype)


class Conv(nn.Conv2d):
    """A k x k convolution (k = 1 or 3, same padding), after a 2x downsampling or upsampling when asked."""

    def __init__(self, cin: int, cout: int, kernel: int, up: bool = False, down: bool = False):
        super().__init__(cin, cout, kernel, padding=kernel // 2)
        self.up, self.down = up, down

    def forward(self, x: Tensor) -> Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            x = F.avg_pool2d(x, 2)
        return super().forward(x)


class Block(nn.Module):
    """norm-silu-conv(resample), + the embedding, norm-silu-dropout-conv, plus the skip, x sqrt(1/2); then
    optional single-head self-attention (qkv from one 1x1 conv, channels interleaved as (c, 3)), x sqrt(1/2)."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float, up=False, down=False, attention=False):
        super().__init__()
        self.in_channels, self.out_channels, self.dropout = cin, cout, dropout
        self.norm0, self.conv0 = group_norm(cin), Conv(cin, cout, 3, up=up, down=down)
        self.affine = nn.Linear(emb, cout)
        self.norm1, self.conv1 = group_norm(cout), zero_init(Conv(cout, cout, 3))
        self.skip = Conv(cin, cout, 1, up=up, down=down) if cin != cout or up or down else None
        self.attention = attention
        if attention:
            self.norm2, self.qkv = group_norm(cout), Conv(cout, 3 * cout, 1)
            self.proj = zero_init(Conv(cout, cout, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (self.skip(x) if self.skip is not None else x)) * SKIP_SCALE
        if self.attention:
            b, c, hh, ww = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(b, c, 3, hh * ww).unbind(2)
            a = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            x = (self.proj(a.transpose(1, 2).reshape(b, c, hh, ww)) + x) * SKIP_SCALE
        return x


class DDPMpp(nn.Module):
    """G(x, c_noise(t), c_noise(s)[, labels]) on (C, R, R) images; `num_classes` > 0 adds a label embedding whose
    null label (index num_classes) is the all-zero one-hot, as in the official class-conditional networks."""

    def __init__(self, in_channels: int, resolution: int, model_channels: int = 128, channel_mult=(2, 2, 2),
                 num_blocks: int = 4, attn_resolutions=(16,), dropout: float = 0.1, num_classes: int = 0):
        super().__init__()
        self.num_classes, self.noise_channels = num_classes, model_channels
        emb = 4 * model_channels
        self.map_label = nn.Linear(num_classes, model_channels) if num_classes else None
        self.map_layer0, self.map_layer1 = nn.Linear(model_channels, emb), nn.Linear(emb, emb)
        self.map_layer0_s, self.map_layer1_s = nn.Linear(model_channels, emb), nn.Linear(emb, emb)

        self.enc, self.dec = nn.ModuleDict(), nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv(cout, model_channels, 3)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, emb, dropout, down=True)
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = Block(cin, cout, emb, dropout, attention=res in attn_resolutions)
        skips = [m.out_channels for m in self.enc.values()]
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, emb, dropout, attention=True)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, emb, dropout)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, emb, dropout, up=True)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = i == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{i}"] = Block(cin, cout, emb, dropout, attention=attn)
        self.dec[f"{resolution}x{resolution}_aux_norm"] = group_norm(cout)
        self.dec[f"{resolution}x{resolution}_aux_conv"] = zero_init(Conv(cout, in_channels, 3))

    def embed(self, c_t: Tensor, c_s: Tensor, labels: Tensor | None) -> Tensor:
        e = positional_embedding(c_t, self.noise_channels)
        if self.map_label is not None and labels is not None:
            onehot = F.one_hot(labels, self.num_classes + 1)[:, : self.num_classes].to(e.dtype)
            e = e + self.map_label(onehot * math.sqrt(self.num_classes))
        e = self.map_layer1(F.silu(self.map_layer0(e)))
        e_s = positional_embedding(c_s, self.noise_channels)
        return F.silu(e + self.map_layer1_s(F.silu(self.map_layer0_s(e_s))))

    def forward(self, x: Tensor, c_t: Tensor, c_s: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.embed(c_t, c_s, labels)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, Block) else block(x)
            skips.append(x)
        norm, conv = list(self.dec.values())[-2:]
        for block in list(self.dec.values())[:-2]:
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return conv(F.silu(norm(x)))


ARCH = register(Architecture(
    "ddpmpp", "the official IMM CIFAR-10 network (EDM's SongUNet, DDPM++ setting); its weights load key for key",
    build=lambda m, shape, classes: DDPMpp(shape[0], shape[1], model_channels=m.channels,  # emb: 4 x channels
                                           channel_mult=tuple(m.channel_mult), num_blocks=m.num_blocks,
                                           attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                                           num_classes=classes),
))
