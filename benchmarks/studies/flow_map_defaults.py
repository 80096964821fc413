"""The flow maps at their authors' times against the project's earlier ones, on 2D sets of the suite.

"authors'": today's defaults, as the official code runs them: T = 1 and the network fed (t, t - s), and TVM's EMA
target at 0.99. "before": T = 0.994, the network fed (t, s) and (TVM) the online weights as the end point's
velocity, the defaults the published flow-map tables were trained with. Everything else is the 2D suite's job
(benchmarks/studies/suite2d.py: the toy2d config with the method, set and seed changed, scored by the energy
distance of 4000 samples to 4000 held-out points, the mean of two sampling seeds).

    .venv/bin/python -m benchmarks.studies.flow_map_defaults [--sets crescent_blobs tight_wide] [--seeds 2]

Writes results.json and tables.md to --out (default docs/results/flow_map_defaults); trained results are cached
under --cache, by a digest of the resolved config.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from benchmarks.studies.common import mean_spread, publish
from benchmarks.studies.suite2d import STEPS, job_config, scored

METHODS = ("meanflow", "tvm")
BEFORE = {"meanflow": ["T=0.994", "model.s_embedding=identity"],
          "tvm": ["T=0.994", "model.s_embedding=identity", "tvm.target_ema=0"]}
VARIANTS = ("authors'", "before")
OUT = Path("docs/results/flow_map_defaults")


def score(method: str, variant: str, data: str, seed: int, cache: str) -> dict:
    """The energy distance at each of STEPS for one trained (method, variant, set, seed), cached as JSON."""
    cfg = job_config(method, data, seed, extra=tuple(BEFORE[method]) if variant == "before" else ())
    return scored(cfg, cache, method=method, variant=variant, set=data, seed=seed)


def table(results: list[dict], variant: str = "times") -> str:
    """A row per (method, variant, set): the mean ± half the range over seeds at each step count."""
    rows = [f"| method | {variant} | set | " + " | ".join(f"{k} step{'s' * (k > 1)}" for k in STEPS) + " |",
            "|---|---|---|" + "---|" * len(STEPS)]
    groups: dict[tuple, list[list[float]]] = {}
    for r in results:
        groups.setdefault((r["method"], r["variant"], r["set"]), []).append(r["energy"])
    for (method, variant, data), runs in sorted(groups.items()):
        cells = [mean_spread([e[i] for e in runs]) for i in range(len(STEPS))]
        rows.append(f"| {method} | {variant} | {data} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["crescent_blobs", "tight_wide"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default="imm-runs/flow_map_defaults")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    jobs = [(m, v, s, seed, args.cache) for m in METHODS for v in VARIANTS for s in args.sets
            for seed in range(args.seeds)]
    jobs.sort(key=lambda j: j[0] != "tvm")  # the long ones first
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(score, *zip(*jobs, strict=True)))
    publish(args.out, results, f"Energy distance to held-out points (mean ± half the range over {args.seeds} seeds), "
                               f"toy2d's budget (3000 steps):\n\n{table(results)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
