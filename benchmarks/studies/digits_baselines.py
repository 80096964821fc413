"""IMM against its baselines on sklearn's 8x8 digits, same budget (training steps, batch, network), on CPU.

Trains each method with imm/configs/digits.yaml, then measures the energy distance on pixels between
samples and the held-out digits (539 images) at the step counts each method is used with, against the
held-out set's distance to the training set (the floor: two finite samples of the same digits). Writes one
sample grid per method and sampler under --out.

    .venv/bin/python -m benchmarks.studies.digits_baselines [--steps 3000] [--out docs/results/digits_baselines]
                                                            [key=value ...]

It prints the table docs/digits/README.md quotes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from imm.config import load_config
from imm.data import load_data
from imm.metrics import energy_distance
from imm.sampling.pictures import image_grid_png
from imm.train import train
from imm.trained import load_trained

PLAN = {  # method: [(sampler, steps), ...]
    "imm": [("pushforward", 1), ("pushforward", 2), ("pushforward", 4), ("pushforward", 8), ("restart", 4)],
    "cm": [("restart", 1), ("restart", 2), ("pushforward", 2)],
    "fm": [("euler", 2), ("euler", 8), ("euler", 32)],
    "ddpm": [("ancestral", 32), ("ddim", 2), ("ddim", 8), ("ddim", 32)],
    "vae": [("decode", 1)],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="training steps for every method")
    parser.add_argument("--n", type=int, default=2000, help="samples per evaluation")
    parser.add_argument("--methods", default=",".join(PLAN), help="comma-separated subset of " + ",".join(PLAN))
    parser.add_argument("--out", default="docs/results/digits_baselines", help="folder for the sample grids")
    parser.add_argument("overrides", nargs="*", help="digits config overrides for every method")
    args = parser.parse_args()
    torch.set_num_threads(1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="imm-digits-") as tmp:
        for method in args.methods.split(","):
            cfg = load_config("digits", [f"method={method}", f"train.steps={args.steps}", "eval.steps=[1]",
                                         f"eval.every={args.steps}", "eval.n_samples=200",
                                         f"train.out_dir={tmp}/{method}", *args.overrides])
            t0 = time.perf_counter()
            train(cfg, stream=open("/dev/null", "w"))  # noqa: SIM115
            train_s = time.perf_counter() - t0
            gen = load_trained(f"{tmp}/{method}")
            data = load_data(gen.cfg.data)
            for sampler, k in PLAN[method]:
                x = gen.sample(args.n, k, seed=0, sampler=sampler)
                rows.append((method, sampler, k, energy_distance(x, data.heldout), train_s))
                image_grid_png(x, out / f"{method}_{sampler}_{k}.png")
                print(f"{method:5s} {sampler:11s} {k:3d} steps  energy {rows[-1][3]:.4f}  (trained in {train_s:.0f}s)",
                      flush=True)
        floor = energy_distance(data.train, data.heldout)
    print("\n| method | sampler | steps | energy distance (held-out) | training time |\n|---|---|---|---|---|")
    for method, sampler, k, e, s in rows:
        print(f"| {method} | {sampler} | {k} | {e:.4f} | {s:.0f} s |")
    print(f"| (training set itself) | - | - | {floor:.4f} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
