"""Sample from a checkpoint: `python -m imm.sample --checkpoint PATH --steps K --n N --out FILE`.

Writes `.npy` (the raw samples: (N, D) points or (N, C, H, W) images in the data's range [-1, 1]) or `.png`
(a scatter plot of 2D points, or a grid of images) by the file's extension.
"""

from __future__ import annotations

import argparse
import sys

import torch

from imm.config import ConfigError
from imm.sampling.pictures import save_samples
from imm.trained import add_sample_flags, as_flag_error, load_trained, sample_with_flags


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
    add_sample_flags(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        gen = load_trained(args.checkpoint, args.device)
        x = sample_with_flags(gen, args)
        save_samples(x, args.out, title=f"{gen.cfg.method}, {args.steps} step(s)")
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {as_flag_error(e)}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
