"""A residual MLP for vector data that embeds t and s separately (notes section 3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from imm.networks.registry import Architecture, register


def sinusoidal_embedding(c_noise: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style features of the (already scaled, e.g. 1000 t) noise level: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=c_noise.device) / half)
    args = c_noise.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def time_embedder(emb_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))


class ResidualBlock(nn.Module):
    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(nn.functional.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.dropout(nn.functional.silu(z)))


class MLP(nn.Module):
    """G(x, c_noise(t), c_noise(s)[, label]) for x of any shape (flattened to `dim` features inside).

    s has its own embedding MLP, added to t's; with num_classes > 0 a label embedding is added too, whose
    extra index `num_classes` is the null label of classifier-free guidance.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, emb_dim: int = 128, dropout: float = 0.0,
                 num_classes: int = 0):
        super().__init__()
        self.emb_dim, self.num_classes = emb_dim, num_classes
        self.t_embed = time_embedder(emb_dim, hidden)
        self.s_embed = time_embedder(emb_dim, hidden)
        self.label_embed = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, c_noise_t: Tensor, c_noise_s: Tensor, class_labels: Tensor | None = None) -> Tensor:
        emb = self.t_embed(sinusoidal_embedding(c_noise_t, self.emb_dim).to(x.dtype))
        emb = emb + self.s_embed(sinusoidal_embedding(c_noise_s, self.emb_dim).to(x.dtype))
        if self.label_embed is not None:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.num_classes, device=x.device)
            emb = emb + self.label_embed(class_labels)
        emb = nn.functional.silu(emb)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h))).view_as(x)


ARCH = register(Architecture(
    "mlp", "a residual MLP on flattened data (any shape)",
    build=lambda m, shape, classes: MLP(math.prod(shape), hidden=m.hidden, depth=m.depth, emb_dim=m.emb_dim,
                                        dropout=m.dropout, num_classes=classes),
    images=False, channels_last=False,
))
