"""A DDPM++-style U-Net for images (the CIFAR-10 network of the method notes), with t and s embedded separately.

Written in the spirit of the DDPM++ configuration of EDM's SongUNet, but simplified: resampling is a plain
stride-2 conv / nearest-upsample + conv rather than a residual block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from imm.networks.dual import GroupNorm, attention
from imm.networks.mlp import sinusoidal_embedding, time_embedder
from imm.networks.registry import Architecture, register

SKIP_SCALE = 1 / math.sqrt(2)  # DDPM++ rescales every residual sum so activations keep unit variance


def num_groups(channels: int) -> int:
    """GroupNorm groups: the largest divisor of `channels` not above min(32, channels // 4), so tiny widths work."""
    g = max(1, min(32, channels // 4))
    while channels % g:
        g -= 1
    return g


def group_norm(channels: int) -> GroupNorm:
    return GroupNorm(num_groups(channels), channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero weights and bias, so a residual branch (or the whole output) starts at exactly zero."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """norm-act-conv, + embedding, norm-act-dropout-conv(zero), plus the skip; starts as skip(x) / sqrt(2)."""

    def __init__(self, cin: int, cout: int, emb_channels: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_channels, cout)  # the embedding is *added* per channel (DDPM++, no adaptive scale)
        self.norm2, self.dropout = group_norm(cout), nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.skip(x) + h) * SKIP_SCALE


class Attention(nn.Module):
    """Multi-head self-attention over the H x W positions; zero-init projection, so it starts as x / sqrt(2)."""

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.norm, self.qkv = group_norm(channels), nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return (x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))) * SKIP_SCALE


class Level(nn.Module):
    """A residual block, optionally followed by attention: the unit that both U-Net paths repeat."""

    def __init__(self, cin: int, cout: int, emb_channels: int, dropout: float, attention: bool):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_channels, dropout)
        self.attn = Attention(cout) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (avoids the checkerboard of transposed convs)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """G(x, c_noise(t), c_noise(s)[, label]) for (B, C, H, W) images.

    `emb_dim` is the width of the sinusoidal features of each time (default model_channels); each time has its own
    2-layer MLP to 4 model_channels, summed with the label embedding (index `num_classes` is the null label of
    classifier-free guidance). Encoder levels run `num_blocks` blocks then halve the resolution (not at the last);
    the decoder mirrors it with num_blocks + 1 blocks per level, each consuming one encoder skip.
    """

    def __init__(self, in_channels: int, resolution: int, model_channels: int = 128, channel_mult: tuple = (2, 2, 2),
                 num_blocks: int = 4, attn_resolutions: tuple = (16,), dropout: float = 0.0,
                 emb_dim: int | None = None, num_classes: int = 0):
        super().__init__()
        if resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"resolution {resolution} cannot be halved {len(channel_mult) - 1} times")
        self.emb_dim, self.num_classes = emb_dim or model_channels, num_classes
        emb_channels = 4 * model_channels
        self.t_embed = time_embedder(self.emb_dim, emb_channels)
        self.s_embed = time_embedder(self.emb_dim, emb_channels)
        self.label_embed = nn.Embedding(num_classes + 1, emb_channels) if num_classes else None

        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, c, res = [model_channels], model_channels, resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.down.append(Level(c, model_channels * mult, emb_channels, dropout, res in attn_resolutions))
                c = model_channels * mult
                skips.append(c)
            if level < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
                res //= 2
        self.mid = nn.ModuleList([Level(c, c, emb_channels, dropout, True), Level(c, c, emb_channels, dropout, False)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                cskip = skips.pop()
                self.up.append(Level(c + cskip, model_channels * mult, emb_channels, dropout, res in attn_resolutions))
                c = model_channels * mult
            if level > 0:
                self.up.append(Upsample(c))
                res *= 2
        self.out_norm = group_norm(c)
        self.out = zero_init(nn.Conv2d(c, in_channels, 3, padding=1))

    def embedding(self, c_noise_t: Tensor, c_noise_s: Tensor, class_labels: Tensor | None, dtype: torch.dtype) -> Tensor:
        emb = self.t_embed(sinusoidal_embedding(c_noise_t, self.emb_dim).to(dtype))
        emb = emb + self.s_embed(sinusoidal_embedding(c_noise_s, self.emb_dim).to(dtype))
        if self.label_embed is not None:
            if class_labels is None:
                class_labels = torch.full(c_noise_t.shape, self.num_classes, device=c_noise_t.device)
            emb = emb + self.label_embed(class_labels)
        return F.silu(emb)

    def forward(self, x: Tensor, c_noise_t: Tensor, c_noise_s: Tensor, class_labels: Tensor | None = None) -> Tensor:
        emb = self.embedding(c_noise_t, c_noise_s, class_labels, x.dtype)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, Level) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, Level) else layer(h)
        return self.out(F.silu(self.out_norm(h)))


ARCH = register(Architecture(
    "unet", "a DDPM++-style U-Net of this project (lighter than the official one)",
    build=lambda m, shape, classes: UNet(shape[0], shape[1], model_channels=m.channels,
                                         channel_mult=tuple(m.channel_mult), num_blocks=m.num_blocks,
                                         attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                                         emb_dim=m.emb_dim, num_classes=classes),
))
