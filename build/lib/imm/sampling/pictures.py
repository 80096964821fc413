"""Samples as pictures: raw `.npy`, an image grid or a scatter plot of 2D points over the data (`save_samples`), for
`imm-orch sample`, `python -m imm.sample` and the sample grids on MLflow's pages."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def save_samples(x: Tensor, out: str | Path, title: str = "", reference: Tensor | None = None) -> None:
    """Raw samples (.npy), or a picture (.png): an image grid, or 2D points over faint `reference` data."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x.cpu().numpy())
    elif out.suffix == ".png":
        if x.ndim == 4:
            image_grid_png(x, out)
        else:
            scatter_png(x, out, title, reference=reference)
    else:
        raise ValueError(f"--out: unknown extension {out.suffix!r}; use .npy or .png")


def image_grid_png(x: Tensor, out: str | Path, max_images: int = 64, min_size: int = 256) -> None:
    """The first `max_images` images of (N, C, H, W) in [-1, 1] as a square grid, enlarged (nearest) to >= min_size px."""
    from PIL import Image

    x = x[:max_images].detach().float().cpu().clamp(-1, 1)
    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), -1.0)  # 1-pixel dark borders
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
    pixels = ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(pixels[..., 0] if c == 1 else pixels, mode="L" if c == 1 else "RGB")
    scale = max(1, math.ceil(min_size / max(img.size)))
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(out)


def reference_points(cfg, n: int = 2000) -> Tensor | None:
    """Held-out points of a 2D run's data, to draw behind its samples; None for images or data not at hand."""
    from imm.data import load_data

    try:
        heldout = load_data(cfg.data).heldout
    except Exception:  # e.g. a model from elsewhere whose data file is not on this machine
        return None
    return heldout[:n] if heldout.ndim == 2 and heldout.shape[-1] == 2 else None


def scatter_png(x: Tensor, out: str | Path, title: str = "", reference: Tensor | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x.shape[-1] != 2:
        raise ValueError(f"a .png scatter needs 2D points, got dimension {x.shape[-1]}; write .npy instead")
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ax.scatter(*reference.cpu().T, s=1, c="0.8", label="data")
    ax.scatter(*x.cpu().T, s=1, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
