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
from omegaconf import OmegaConf
from torch import Tensor

from imm.config import METHOD_SAMPLERS, ConfigError, config_from_dict
from imm.methods import build_model, generate, num_classes_of
from imm.train import load_checkpoint


def load_sampling_model(checkpoint: str | Path, device: str = "cpu", ema: bool = True):
    """(model with the EMA weights, resolved config, data shape) from a checkpoint file or folder."""
    state = load_checkpoint(checkpoint, map_location=device)
    cfg = config_from_dict(state["config"])
    shape = tuple(state["data_shape"])
    model = build_model(cfg, shape, state["sigma_d"], state.get("num_classes", 0)).to(device)
    model.load_state_dict(state["ema" if ema else "model"])
    return model.eval(), cfg, shape


def save_samples(x: Tensor, out: str | Path, title: str = "") -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, x.cpu().numpy())
    elif out.suffix == ".png":
        if x.ndim == 4:
            image_grid_png(x, out)
        else:
            scatter_png(x, out, title)
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
        epilog="example: python -m imm.sample --checkpoint imm-runs/local --steps 2 --n 5000 --out samples.png",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt or the folder holding it")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps (1..8 for IMM)")
    parser.add_argument("--sampler", default=None,
                        help="pushforward|restart (imm, cm), euler|heun (fm), ancestral|ddim (ddpm), decode (vae)")
    parser.add_argument("--eta", type=float, default=None, help="ddim: 0 deterministic (default), 1 DDPM-like")
    parser.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--label", type=int, default=None, help="class-conditional models: sample this class only")
    parser.add_argument("--n", type=int, default=5000, help="number of samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output file: .npy (raw samples) or .png")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        model, cfg, shape = load_sampling_model(args.checkpoint, args.device)
        allowed = METHOD_SAMPLERS[cfg.method]
        if args.sampler is not None and args.sampler not in allowed:
            raise ConfigError(f"--sampler: {args.sampler!r} does not apply to method={cfg.method}; choose {list(allowed)}")
        if args.steps < 1:
            raise ConfigError(f"--steps: must be >= 1, got {args.steps}")
        for key, value in (("sample.eta", args.eta), ("sample.cfg_scale", args.cfg_scale)):
            if value is not None:
                OmegaConf.update(cfg, key, value)
        labels = None
        if args.label is not None:
            classes = num_classes_of(model)
            if not 0 <= args.label < classes:
                raise ConfigError(f"--label: {args.label} is not a class of this model (it has {classes})")
            labels = torch.full((args.n,), args.label, device=args.device)
        x = generate(model, cfg, args.n, args.steps, sampler=args.sampler, seed=args.seed, data_shape=shape,
                     labels=labels)
        save_samples(x, args.out, title=f"{cfg.method}, {args.steps} step(s)")
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
