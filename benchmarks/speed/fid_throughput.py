"""FID evaluation throughput: images/s of the Inception pool3 extractor on CIFAR-sized images, against the
baseline of drawing the same images in one IMM step with the paper's CIFAR-10 U-Net (same device, same run).

The ratio says how much an evaluation costs beyond sampling: Inception works at 299 x 299, so on small images
it dominates. Weights are random (speed does not depend on them; nothing is downloaded).

    .venv/bin/python -m benchmarks.speed.fid_throughput [--device cpu] [--batch 50] [--n 200]
    .venv/bin/python -m benchmarks.speed.fid_throughput --device cuda --batch 500 --n 5000
"""

from __future__ import annotations

import argparse
import time

import torch

from imm.config import load_config
from imm.methods import build_model
from imm.metrics.features import Quantized
from imm.metrics.inception import InceptionV3
from imm.sampling import generate


def rate(fn, n: int, batch: int, device: str) -> float:
    fn(min(batch, n))  # warm-up (cuDNN autotuning, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        fn(min(batch, n - start))
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--n", type=int, default=200)
    args = p.parse_args()
    torch.manual_seed(0)

    inception = Quantized(InceptionV3()).eval().to(args.device)
    images = torch.rand(args.batch, 3, 32, 32, device=args.device) * 2 - 1
    fid_rate = rate(lambda b: inception(images[:b]), args.n, args.batch, args.device)

    cfg = load_config("cifar10", ["eval.features=none"])
    unet = build_model(cfg, (3, 32, 32), sigma_d=0.5).to(args.device).eval()
    sample_rate = rate(lambda b: generate(unet, cfg, b, 1, data_shape=(3, 32, 32), batch_size=b), args.n, args.batch,
                       args.device)

    print(f"device {args.device}, batch {args.batch}, {args.n} images of 3x32x32")
    print(f"Inception pool3 features:             {fid_rate:10.1f} images/s")
    print(f"baseline, 1-step IMM sampling (U-Net): {sample_rate:10.1f} images/s")
    print(f"feature extraction time / sampling time: {sample_rate / fid_rate:.2f}")


if __name__ == "__main__":
    main()
