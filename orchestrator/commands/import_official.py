"""`imm-orch import`: an official IMM checkpoint as this project's checkpoint (the paper's yardstick)."""

from __future__ import annotations

from orchestrator import terminal
from orchestrator.commands import Command, output_flags, overrides_arg, register

EXAMPLES = """\
examples:
  imm-orch import --from official-cifar10 cifar10.pt --out imported/cifar10 \\
      data.name=cifar10:./data/cifar10 eval.inception_weights=./weights/inception.safetensors
  imm-orch eval --model imported/cifar10 --steps 1 2 --n 50000     # the paper: FID 3.20 and 1.98 (a GPU: ~minutes)
  imm-orch import --from official-imagenet256-ts-a2 imagenet256_ts_a2.pkl --out imported/imagenet256 \\
      eval.vae=./weights/sd-vae-ft-ema data.name=latents:s3://bucket/imagenet256-latents
  imm-orch eval --model imported/imagenet256 --steps 1 2 4 8 --n 50000   # the paper: 8.05 3.99 2.51 1.99 (CFG 1.5)

The file is the authors' checkpoint (github.com/lumalabs/imm, Hugging Face lumaai/imm), which you download
yourself; nothing is fetched. It is read without the official code and without running code from the file.
"""

PAPER = {
    "official-cifar10": "--steps 1 2 --n 50000   (the paper: FID 3.20 and 1.98)",
    "official-imagenet256": "--steps 1 2 4 8 --n 50000   (the paper, CFG 1.5: FID 8.05, 3.99, 2.51, 1.99)",
}


def arguments(parser) -> None:
    parser.add_argument("path", help="the official file: a local path or s3:// URI")
    parser.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                        help="what the file is: official-cifar10, official-imagenet256-ts-a2 (imagenet256_ts_a2.pkl) "
                             "or official-imagenet256-s-a1 (imagenet256_s_a1.pkl)")
    parser.add_argument("--out", required=True, help="folder to write checkpoint.pt into (a local path)")
    overrides_arg(parser, "stored with the checkpoint, e.g. data.name=cifar10:PATH eval.inception_weights=PATH")
    output_flags(parser)


def run(args) -> int:
    from imm.data.remote import local_copy
    from imm.import_official import import_official, write_checkpoint

    out = terminal.out()
    checkpoint = import_official(args.source, local_copy(args.path), args.overrides)
    path = write_checkpoint(checkpoint, args.out)
    n = sum(v.numel() for k, v in checkpoint["ema"].items() if k != "sigma_d")
    print(f"imported {checkpoint['imported_from']}: {len(checkpoint['ema']) - 1} tensors, {n:,} parameters, "
          f"model.arch={checkpoint['config']['model']['arch']} -> {path}", file=out)
    paper = PAPER["official-cifar10" if args.source == "official-cifar10" else "official-imagenet256"]
    print(f"next: imm-orch eval --model {path.parent} {paper}", file=out)
    return 0


COMMAND = register(Command(
    name="import",
    help="convert an official IMM checkpoint into this project's checkpoint (the paper's yardstick)",
    description="Read an official IMM checkpoint (its EMA network) or a state dict with its key names, map "
                "every weight onto this project's network (CIFAR-10: model.arch=ddpmpp with the cifar10 config; "
                "ImageNet-256: DiT-XL/2 with the imagenet256_dit config) and write OUT/checkpoint.pt, ready for "
                "`imm-orch eval` and `imm-orch sample`.",
    examples=EXAMPLES,
    arguments=arguments,
    run=run,
    overrides=True,
))
