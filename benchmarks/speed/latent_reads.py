"""Latent batches per second for one worker (imm/data/latents.py): rows in memory (the baseline), memory-mapped local
shards, and shards fetched from an S3 server (moto's, on 127.0.0.1) through the bounded cache, first pass (fetching)
and later passes (cached). The set is ImageNet-256's latent shape (4x32x32, float16); ratios are against memory.

    .venv/bin/python -m benchmarks.speed.latent_reads [--shards 16] [--rows 2048] [--batch 256]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imm.data.latents import LatentWriter, Manifest, ShardReader

SHAPE = (4, 32, 32)


def rate(draw, batches: int) -> float:
    t0 = time.perf_counter()
    for step in range(1, batches + 1):
        torch.manual_seed(step)
        draw(step)
    return batches / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--rows", type=int, default=2048, help="rows per shard")
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="imm-latent-reads-"))
    g = np.random.default_rng(0)
    w = LatentWriter(root / "set", SHAPE, shard_size=args.rows, num_classes=1000)
    for _ in range(args.shards):
        w.add(g.standard_normal((args.rows, *SHAPE), dtype=np.float32), g.integers(0, 1000, args.rows))
    m = w.close()
    mb = sum((root / "set" / s["file"]).stat().st_size for s in m.shards) / 2**20
    passes = 2
    batches = passes * args.shards * args.rows // args.batch
    print(f"set: {args.shards} shards x {args.rows} rows of {SHAPE} float16 = {mb:.0f} MB; batch {args.batch}, "
          f"{batches} batches ({passes} passes)")

    everything = m.normalise(np.concatenate([np.load(root / "set" / s["file"]) for s in m.shards]))
    base = rate(lambda step: everything[torch.randint(len(everything), (args.batch,))], batches)
    local = ShardReader(m, 0, 1, cache_bytes=1e12)
    mapped = rate(lambda step: local.batch(args.batch, step, "cpu"), batches)

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server._server.server_address  # noqa: SLF001  (the port the OS chose)
    os.environ.update({"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"})
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    for f in (root / "set").iterdir():
        s3.upload_file(str(f), "bench", f"set/{f.name}")
    remote = ShardReader(Manifest.read("s3://bench/set"), 0, 1, cache_bytes=4 * args.rows * 8192 + 1,
                         cache_dir=root / "cache")  # a window of 4 shards: every window is fetched on each pass
    per_pass = args.shards * args.rows // args.batch
    t0 = time.perf_counter()
    s3_rate = rate(lambda step: remote.batch(args.batch, step, "cpu"), batches)
    fetched = remote.fetched_bytes / 2**20 / (time.perf_counter() - t0)
    full = ShardReader(Manifest.read("s3://bench/set"), 0, 1, cache_bytes=1e12, cache_dir=root / "cache-all")
    rate(lambda step: full.batch(args.batch, step, "cpu"), per_pass)  # the first pass fetches the whole set
    cached = rate(lambda step: full.batch(args.batch, step, "cpu"), batches)
    server.stop()

    rows = lambda r: r * args.batch  # noqa: E731
    print(f"in memory (baseline):       {base:8.1f} batches/s  {rows(base):10,.0f} rows/s")
    print(f"local, memory-mapped:       {mapped:8.1f} batches/s  {rows(mapped):10,.0f} rows/s  "
          f"{mapped / base:.2f}x memory")
    print(f"S3, 4-shard window:         {s3_rate:8.1f} batches/s  {rows(s3_rate):10,.0f} rows/s  "
          f"{s3_rate / base:.2f}x memory  (fetching {fetched:.0f} MB/s, {remote.fetched_bytes / 2**20:.0f} MB)")
    print(f"S3, whole set cached:       {cached:8.1f} batches/s  {rows(cached):10,.0f} rows/s  "
          f"{cached / base:.2f}x memory")


if __name__ == "__main__":
    main()
