"""One method's settings against each other on 2D sets of the suite: each variant is a list of overrides.

Each (variant, set, seed) trains the 2D suite's job (benchmarks/studies/suite2d.py: the toy2d config with the
method, set and seed changed, at toy2d's budget) with the variant's overrides, from the set's flow-matching teacher
with --distill (suite2d's teacher_checkpoint: seed 0, trained once), and is scored by the energy distance of 4000
samples to 4000 held-out points (the mean of two sampling seeds). The study it has run (its command is in
benchmarks/README.md):

  fmm.teacher_grad   flow map matching's Lagrangian distillation with and without the gradient through the
                     teacher's input, the one path by which it differs from TVM distilled

    .venv/bin/python -m benchmarks.studies.ablation2d --method M [--distill] [--base OVERRIDE ...]
        --variant "LABEL:OVERRIDE[,OVERRIDE]" ... [--sets grid spirals] [--seeds 2] --out DIR

Writes results.json and tables.md to --out; trained results are cached under --cache, by a digest of the resolved
config.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from benchmarks.studies.common import publish
from benchmarks.studies.flow_map_defaults import table
from benchmarks.studies.suite2d import job_config, scored, teacher_checkpoint


def variant(text: str) -> tuple[str, tuple[str, ...]]:
    """'LABEL:KEY=VALUE,KEY=VALUE' -> (label, overrides)."""
    label, sep, overrides = text.partition(":")
    if not sep or not label or "=" not in overrides:
        raise argparse.ArgumentTypeError(f"--variant: {text!r} is not LABEL:KEY=VALUE[,KEY=VALUE]")
    return label, tuple(overrides.split(","))


def score(method: str, label: str, overrides: tuple[str, ...], data: str, seed: int, cache: str,
          distill: bool) -> dict:
    """The energy distance at each step count for one trained (variant, set, seed), cached as JSON."""
    cfg = job_config(method, data, seed, teacher=teacher_checkpoint(data, cache) if distill else None,
                     extra=overrides)
    name = method + (" (distilled)" if distill else "")
    return scored(cfg, cache, method=name, variant=label, set=data, seed=seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--distill", action="store_true", help="train from each set's flow-matching teacher")
    ap.add_argument("--base", nargs="*", default=[], help="overrides every variant shares")
    ap.add_argument("--variant", type=variant, action="append", required=True, help="LABEL:KEY=VALUE[,KEY=VALUE]")
    ap.add_argument("--sets", nargs="+", default=["grid", "spirals"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default="imm-runs/ablation2d")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        if args.distill:  # each set's teacher first, once
            list(pool.map(teacher_checkpoint, args.sets, [args.cache] * len(args.sets)))
        jobs = [(args.method, label, (*args.base, *overrides), s, seed, args.cache, args.distill)
                for label, overrides in args.variant for s in args.sets for seed in range(args.seeds)]
        results = list(pool.map(score, *zip(*jobs, strict=True)))
    shared = f" Shared overrides: {' '.join(args.base)}." if args.base else ""
    variants = "; ".join(f"{label}: {' '.join(o)}" for label, o in args.variant)
    text = (f"Energy distance to held-out points (mean ± half the range over {args.seeds} seeds), toy2d's budget "
            f"(3000 steps){', each set' + chr(39) + 's flow-matching teacher' if args.distill else ''}.{shared} "
            f"Variants: {variants}.\n\n{table(results, 'variant')}\n")
    publish(args.out, results, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
