"""DiT (Peebles & Xie 2023) with the official IMM ImageNet network's layer structure (`model.arch=dit`).

As the IMM authors use it (github.com/lumalabs/imm, training/dit.py): patchify by a p x p stride-p convolution, fixed
2D sin-cos position embeddings, adaLN-Zero blocks (LayerNorm without affine, eps 1e-6; multi-head attention with
qkv bias; a 4x MLP with tanh-GELU), a t embedding and a second one for s (or the stride t - s) added to it, a label
embedding whose last row is the null label (classifier-free guidance), and an adaLN final layer. Parameter names
follow theirs (x_embedder.proj, t_embedder.mlp, s_embedder.mlp, y_embedder.embedding_table, pos_embed, blocks.N.attn.qkv,
blocks.N.mlp.fc1, blocks.N.adaLN_modulation.1, final_layer.linear, ...), so their checkpoints map key for key.
adaLN-Zero: every block's modulation and the output layer start at zero, so the network's output is exactly zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from imm.networks.dual import attention
from imm.networks.registry import Architecture, register

SIZES = {  # name: (hidden size, depth, heads), DiT's table 1
    "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16),
}
PATCHES = (2, 4, 8)
NAMES = tuple(f"{s}/{p}" for s in SIZES for p in PATCHES)


def parse_size(name: str) -> tuple[int, int, int, int]:
    """'XL/2' -> (hidden, depth, heads, patch)."""
    size, _, patch = name.partition("/")
    if name not in NAMES:
        raise ValueError(f"model.dit: {name!r} is not one of {list(NAMES)}")
    return (*SIZES[size], int(patch))


def timestep_features(c: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """[cos(c f_i), sin(c f_i)], f_i = max_period^(-i / (dim / 2)): GLIDE's embedding, phases in float64."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64, device=c.device) / half)
    args = c.double()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1).to(c.dtype)


def sincos_2d(dim: int, grid: int) -> Tensor:
    """MAE's fixed 2D position embedding (grid x grid, dim): half the channels from one axis, half from the other."""
    def axis(d: int, pos: Tensor) -> Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    coords = torch.arange(grid, dtype=torch.float64)
    w, h = torch.meshgrid(coords, coords, indexing="xy")  # w varies along a row, as numpy's meshgrid(w, h)
    return torch.cat([axis(dim // 2, w), axis(dim // 2, h)], dim=1).float()


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, features: int = 256):
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, c: Tensor) -> Tensor:
        return self.mlp(timestep_features(c, self.features))


class LabelEmbedder(nn.Module):
    def __init__(self, rows: int, hidden: int):
        super().__init__()
        self.embedding_table = nn.Embedding(rows, hidden)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding_table(labels)


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, hidden: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, hidden, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, hidden: int, ratio: float = 4.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden, int(hidden * ratio)), nn.Linear(int(hidden * ratio), hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """x + gate * attn(modulate(norm(x))), then the same for the MLP; the six modulations from the embedding."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp, self.dropout = Mlp(hidden), dropout
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        h = F.dropout(self.mlp(modulate(self.norm2(x), shift2, scale2)), self.dropout, self.training)
        return x + gate2[:, None] * h


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """G(x, c_noise(t), c_noise(s) or the stride[, labels]) on (C, R, R) inputs (latents); `DiT.named('XL/2', ...)`
    builds a named size. Labels index the embedding table; row num_classes is the null label (the only row if
    unconditional)."""

    def __init__(self, in_channels: int, resolution: int, hidden: int = 384, depth: int = 12, heads: int = 6,
                 patch: int = 2, num_classes: int = 0, dropout: float = 0.0):
        super().__init__()
        if resolution % patch:
            raise ValueError(f"model.dit: patch {patch} does not divide the input resolution {resolution}")
        self.num_classes, self.channels, self.patch = num_classes, in_channels, patch
        self.x_embedder = PatchEmbed(in_channels, hidden, patch)
        self.t_embedder, self.s_embedder = TimestepEmbedder(hidden), TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes + 1, hidden)
        grid = resolution // patch
        self.pos_embed = nn.Parameter(sincos_2d(hidden, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, dropout) for _ in range(depth))
        self.final_layer = FinalLayer(hidden, patch, in_channels)
        self._init_weights()

    @classmethod
    def named(cls, size: str, in_channels: int, resolution: int, num_classes: int = 0, dropout: float = 0.0) -> DiT:
        hidden, depth, heads, patch = parse_size(size)
        return cls(in_channels, resolution, hidden, depth, heads, patch, num_classes, dropout)

    def _init_weights(self) -> None:
        """DiT's: xavier linears, the patch projection like a linear, N(0, 0.02) embeddings, adaLN-Zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for emb in (self.t_embedder, self.s_embedder):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                       self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c_t: Tensor, c_s: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            labels = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
        c = self.t_embedder(c_t) + self.s_embedder(c_s) + self.y_embedder(labels)
        h = self.x_embedder(x) + self.pos_embed
        for block in self.blocks:
            h = block(h, c)
        h = self.final_layer(h, c)  # (N, T, p * p * C)
        n, g, p = x.shape[0], x.shape[-1] // self.patch, self.patch
        h = h.reshape(n, g, g, p, p, self.channels)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(n, self.channels, g * p, g * p)


ARCH = register(Architecture(
    "dit", "DiT in the official IMM ImageNet layout, sized by model.dit (S|B|L|XL / 2|4|8)",
    build=lambda m, shape, classes: DiT.named(m.dit, shape[0], shape[1], num_classes=classes, dropout=m.dropout),
))
