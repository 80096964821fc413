"""Sample from a checkpoint: `python -m imm.sample --checkpoint PATH --steps K --n N --out FILE`.

Writes `.npy` (the raw samples: (N, D) points or (N, C, H, W) images in the data's range [-1, 1]) or `.png`
(a scatter plot of 2D points, or a grid of images) by the file's extension.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from imm.config import ConfigError
from imm.generator import load_generator

SAMPLE_FLAGS = ("n", "steps", "sampler", "label", "cfg_scale", "eta")


def as_flag_error(e: Exception) -> str:
    """'label: 10 is not ...' from Generator.sample -> '--label: 10 is not ...' for a command line."""
    head, sep, rest = str(e).partition(":")
    return f"--{head.replace('_', '-')}{sep}{rest}" if sep and head in SAMPLE_FLAGS else str(e)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imm.sample",
        description="Draw samples from a trained checkpoint with its EMA weights.",
        epilog="examples:\n"
               "  python -m imm.sample --checkpoint imm-runs/local --steps 2 --n 5000 --out samples.png\n"
               "  python -m imm.sample --checkpoint runs/digits-fm --sampler heun --steps 8 --out grid.png\n"
               "  python -m imm.sample --checkpoint runs/m8/checkpoint.pt --steps 1 --n 10000 --out x.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt or the folder holding it")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps (1..8 for IMM)")
    parser.add_argument("--sampler", default=None,
                        help="one of the checkpoint's method's samplers (default: its own; a wrong one is an error "
                             "that lists them), e.g. pushforward|restart for imm, euler|heun for fm")
    parser.add_argument("--eta", type=float, default=None, help="ddim: 0 deterministic (default), 1 DDPM-like")
    parser.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--label", type=int, default=None, help="class-conditional models: sample this class only")
    parser.add_argument("--n", type=int, default=5000, help="number of samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output file: .npy (raw samples) or .png")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        gen = load_generator(args.checkpoint, args.device)
        x = gen.sample(args.n, args.steps, args.seed, sampler=args.sampler, label=args.label, cfg_scale=args.cfg_scale,
                       eta=args.eta)
        save_samples(x, args.out, title=f"{gen.cfg.method}, {args.steps} step(s)")
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {as_flag_error(e)}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
