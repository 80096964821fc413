"""`imm-orch sample`: samples from any model URI, as raw .npy or a .png grid (or scatter, for 2D data)."""

from __future__ import annotations

from pathlib import Path

from orchestrator import terminal
from orchestrator.commands import Command, check_model_store, model_flags, register, tracking_flags

EXAMPLES = """\
examples:
  imm-orch sample --model models:/toy2d_smoke@champion --steps 2 --n 5000 --out samples.png
  imm-orch sample --model runs:/3f2c... --steps 1 --n 10000 --out samples.npy      # raw samples in [-1, 1]
  imm-orch sample --model imm-runs/ray/RUN/checkpoint_0003000 --steps 4 --out grid.png
  imm-orch sample --model models:/imm-cifar10@champion --label 3 --cfg-scale 1.5 --out cats.png

In Python: orchestrator.load_model("models:/toy2d_smoke@champion").sample(n=64, steps=2, seed=0)
"""


def arguments(parser) -> None:
    from imm.trained import add_sample_flags

    model_flags(parser)
    add_sample_flags(parser)
    tracking_flags(parser)


def run(args) -> int:
    from imm.sampling.pictures import reference_points, save_samples
    from imm.trained import sample_with_flags
    from orchestrator.registry.models import load_model

    if Path(args.out).suffix not in (".npy", ".png"):
        raise ValueError(f"--out: unknown extension {Path(args.out).suffix!r}; use .npy or .png")
    check_model_store(args)
    gen = load_model(args.model, tracking_uri=args.tracking_uri, device=args.device, trust_pickle=args.trust_pickle)
    x = sample_with_flags(gen, args)
    reference = reference_points(gen.cfg) if args.out.endswith(".png") and x.ndim == 2 else None
    save_samples(x, args.out, title=f"{gen.config['method']}, {args.steps} step(s)", reference=reference)
    print(f"wrote {args.n} samples ({args.steps} step(s), shape {tuple(x.shape[1:])}) to {args.out}", file=terminal.out())
    return 0


COMMAND = register(Command(
    name="sample",
    help="draw samples from a model URI into .npy or a .png grid",
    description="Sample with the EMA weights of a model given as runs:/, models:/, a path or s3:// URI.",
    examples=EXAMPLES,
    arguments=arguments,
    run=run,
))
