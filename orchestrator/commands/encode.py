"""`imm-orch encode`: images into a latent set (the VAE on Ray Data) that `data.name=latents:PATH` trains on."""

from __future__ import annotations

from orchestrator import terminal
from orchestrator.commands import Command, output_flags, register

EXAMPLES = """\
examples:
  imm-orch encode folder:/data/imagenet/train --vae /models/sd-vae-ft-ema --out s3://bucket/imagenet256-latents \\
      --posterior sample --normalisation official      # as the official IMM encoder: the released weights agree
  imm-orch encode folder:s3://bucket/images --vae s3://bucket/vae --out ./latents --resolution 64 --address auto
  imm-orch train imagenet256_dit data.name=latents:s3://bucket/imagenet256-latents

The VAE is a folder diffusers' AutoencoderKL.save_pretrained wrote (e.g. a copy of stabilityai/sd-vae-ft-ema you
put there); nothing is downloaded. One subfolder per class gives the labels.
"""


def arguments(parser) -> None:
    parser.add_argument("source", help="folder:PATH, PATH a folder or s3://bucket/prefix of images (subfolders: classes)")
    parser.add_argument("--vae", required=True, help="the AutoencoderKL folder: a local path or s3:// prefix")
    parser.add_argument("--out", required=True, help="where the latent set goes: a folder or s3:// prefix")
    parser.add_argument("--resolution", type=int, default=256, help="center-crop and resize to this square (default 256)")
    parser.add_argument("--shard-size", type=int, default=4096, help="latents per shard (default 4096)")
    parser.add_argument("--heldout", type=int, default=1000, help="images set aside for the metrics (default 1000)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per VAE batch (default 64)")
    parser.add_argument("--workers", type=int, default=None, help="VAE actors (default: one per GPU, else CPUs / 2)")
    parser.add_argument("--posterior", choices=("mean", "sample"), default="mean",
                        help="store the VAE posterior's mean, or its mean and std for a draw at each read as the "
                             "official IMM training does (default: mean)")
    parser.add_argument("--normalisation", choices=("own", "official"), default="own",
                        help="per-channel mean and std: the set's own, or the official ImageNet-256 constants that the "
                             "released weights expect (default: own)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster: auto, HOST:6379 or ray://HOST:10001 (default: start a local Ray)")
    output_flags(parser)


def run(args) -> int:
    from orchestrator.infra import preflight
    from orchestrator.infra.cluster import connect
    from orchestrator.infra.encode import encode

    out = terminal.out()
    for flag in ("resolution", "shard_size", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')}: {getattr(args, flag)} must be >= 1")
    if args.heldout < 0:
        raise ValueError(f"--heldout: {args.heldout} must be >= 0")
    preflight.check_encode(args.source, args.vae, args.out)  # before Ray starts
    with connect(args.address, stream=out):
        encode(args.source, args.vae, args.out, resolution=args.resolution, shard_size=args.shard_size,
               heldout=args.heldout, batch_size=args.batch_size, workers=args.workers, posterior=args.posterior,
               normalisation=args.normalisation, say=lambda line: print(line, file=out, flush=True))
    print(f"next: imm-orch train imagenet256_dit data.name=latents:{args.out}", file=out)
    return 0


COMMAND = register(Command(
    name="encode",
    help="encode images into a latent set (VAE on Ray Data) for latents:PATH",
    description="Run the VAE encoder over every image under SOURCE as a Ray Data batch-inference job (actors, a "
                "GPU each where the cluster has them) and write .npy shards and a manifest (imm/data/latents.py) to "
                "--out, a folder or an s3:// prefix.",
    examples=EXAMPLES,
    arguments=arguments,
    run=run,
))
