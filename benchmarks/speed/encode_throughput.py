"""`imm-orch encode` throughput: images/s of the Ray Data job against the same VAE encoding the same images in one
plain loop in this process (the baseline), measured in one run. The VAE has Stable Diffusion's architecture
(sd-vae-ft-ema's: 4 levels of 128-256-512-512 channels, 8x down to 4 latent channels) with random weights, since
nothing is downloaded; the cost is the architecture's, not the weights'.

    .venv/bin/python -m benchmarks.speed.encode_throughput [--images 48] [--resolution 256] [--workers 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tiny", action="store_true", help="a 2-level VAE (CI checks the code runs)")
    args = p.parse_args()
    import ray
    from diffusers import AutoencoderKL
    from PIL import Image

    from orchestrator.infra.encode import encode, read_image

    root = Path(tempfile.mkdtemp(prefix="imm-encode-bench-"))
    levels = (8, 16) if args.tiny else (128, 256, 512, 512)
    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * len(levels),
                        up_block_types=("UpDecoderBlock2D",) * len(levels), block_out_channels=levels,
                        layers_per_block=1 if args.tiny else 2, norm_num_groups=4 if args.tiny else 32,
                        latent_channels=4).eval()
    vae.save_pretrained(root / "vae")
    g = np.random.default_rng(0)
    for i in range(args.images):
        (root / "img" / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 256, (args.resolution, args.resolution, 3), dtype=np.uint8)).save(
            root / "img" / f"c{i % 4}" / f"{i}.png")
    files = sorted((root / "img").glob("*/*.png"))
    print(f"{args.images} images at {args.resolution}px, VAE levels {levels} "
          f"({sum(p.numel() for p in vae.encoder.parameters()) / 1e6:.1f}M encoder parameters), batch {args.batch}")

    torch.set_num_threads(1)  # as one Ray actor with num_cpus=1 runs
    t0 = time.perf_counter()
    for i in range(0, len(files), args.batch):
        x = torch.from_numpy(np.stack([read_image(str(f), args.resolution) for f in files[i:i + args.batch]]))
        with torch.no_grad():
            _ = vae.encode(x.float() / 127.5 - 1).latent_dist.mean
    base = args.images / (time.perf_counter() - t0)

    ray.init(address="local", num_cpus=args.workers + 1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    t0 = time.perf_counter()
    encode(f"folder:{root / 'img'}", str(root / "vae"), str(root / "latents"), resolution=args.resolution,
           shard_size=16, heldout=4, batch_size=args.batch, workers=args.workers, say=lambda line: None)
    job = args.images / (time.perf_counter() - t0)
    ray.shutdown()
    print(f"one loop, one thread (baseline): {base:7.2f} images/s")
    print(f"Ray Data job, {args.workers} actors:       {job:7.2f} images/s  {job / base:.2f}x the loop "
          "(start-up of the actors included)")


if __name__ == "__main__":
    main()
