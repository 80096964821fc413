"""`imm-orch data`: a downloaded data set or weights file checked against its published hash and written in a
form that loads without unpickling (imm/data/cifar10.py, imm/metrics/inception.py)."""

from __future__ import annotations

from orchestrator import terminal
from orchestrator.commands import Command, output_flags, register

EXAMPLES = """\
examples:
  imm-orch data cifar10 cifar-10-python.tar.gz --out ./data/cifar10           # then data.name=cifar10:./data/cifar10
  imm-orch data cifar10 cifar-10-python.tar.gz --out s3://bucket/cifar10      # the same arrays, on S3 for a cluster
  imm-orch data inception pt_inception-2015-12-05-6726825d.pth --out ./weights/inception.safetensors
                                                          # then eval.inception_weights=./weights/inception.safetensors

You download the files yourself (nothing is fetched): cifar-10-python.tar.gz from
https://www.cs.toronto.edu/~kriz/cifar.html, the Inception weights from github.com/mseitzer/pytorch-fid's
releases. A file whose hash differs from the published one is refused.
"""

KINDS = ("cifar10", "inception")


def arguments(parser) -> None:
    parser.add_argument("kind", choices=KINDS, help="cifar10: the official python archive; inception: pytorch-fid's "
                                                    "Inception-v3 weights (.pth)")
    parser.add_argument("source", help="the downloaded file: a local path or s3:// URI")
    parser.add_argument("--out", required=True,
                        help="cifar10: a folder or s3:// prefix for the arrays; inception: a .safetensors path or s3:// URI")
    output_flags(parser)


def run(args) -> int:
    import tempfile
    from pathlib import Path

    from imm.data.remote import is_remote, local_copy, probe, publish

    out, remote = terminal.out(), is_remote(args.out)
    if args.kind == "inception" and not args.out.endswith(".safetensors"):
        raise ValueError(f"--out: {args.out!r} must end in .safetensors (the weights are written as safetensors)")
    if remote:
        probe(args.out, "--out", exists=False)  # the bucket and credentials, before the work
    source = local_copy(args.source)
    if not source.is_file():
        raise FileNotFoundError(f"source: no file at {args.source!r}")
    with tempfile.TemporaryDirectory(prefix="imm-data-") as staging:
        if args.kind == "cifar10":
            from imm.data.cifar10 import prepare

            folder = Path(staging) if remote else Path(args.out).expanduser()
            shapes = prepare(source, folder)
            written, prefix, use = {n: folder / n for n in shapes}, args.out, f"data.name=cifar10:{args.out}"
            for name, shape in shapes.items():
                print(f"  {name}  {' x '.join(map(str, shape))}", file=out)
        else:
            from imm.metrics.inception import to_safetensors

            path = Path(staging) / Path(args.out).name if remote else Path(args.out).expanduser()
            print(f"  {to_safetensors(source, path)} tensors", file=out)
            written, prefix, use = {path.name: path}, args.out.rsplit("/", 1)[0], f"eval.inception_weights={args.out}"
        if remote:
            for name, path in written.items():
                publish(path, prefix, name)
    print(f"{args.source}: its hash is the published one; wrote {args.out}", file=out)
    print(f"next: {use}", file=out)
    return 0


COMMAND = register(Command(
    name="data",
    help="check a downloaded data set or weights file and write it in a form that loads without unpickling",
    description="Check the official CIFAR-10 archive (MD5) or pytorch-fid's Inception weights (SHA-256) against "
                "the published hash, read it without running code from it, and write arrays (.npy) or "
                "safetensors to --out: what training and FID then read.",
    examples=EXAMPLES,
    arguments=arguments,
    run=run,
))
