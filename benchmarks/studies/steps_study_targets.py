"""Issue 16's two checks at the shipped configs, seeds averaged, scored finely enough to separate values near the
metric's noise floor: IMM at 4 and 8 steps no worse than at 2 (within the seed spread), and IMM at 2 steps better
than flow matching at 8.

toy2d (8gaussians, 3000 training steps) is scored with 20000 samples against one fixed set of 20000 fresh points, a
noise floor about 4x below the study's 5000; digits (8000 training steps, its shipped budget) with 5000 samples
against its 539 held-out images, all the set has. Each model samples with its config's own sampler and grid (IMM:
toy2d restart/uniform, digits pushforward/eta; FM: Euler). Three seeds each; models are cached, and the digits ones
are those of benchmarks/studies/steps_study_digits.py when its cache is given. About 12 minutes on 2 cores.

    .venv/bin/python -m benchmarks.studies.steps_study_targets [--out docs/results/steps_study] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from benchmarks.studies import steps_study

SETS = {"8gaussians": 3000, "digits": 8000}  # set: its shipped training budget
IMM_STEPS, FM_STEPS = (1, 2, 4, 8, 16), (8, 16)
TOY_N = 20000
SEEDS = 3


def score(job: steps_study.Job, cache: str) -> dict:
    """Energy distance of one trained model at each step count, with its own sampler; one noise seed per value."""
    torch.set_num_threads(1)
    from imm.data import load_data
    from imm.data.toy2d import TOY_SETS
    from imm.metrics import energy_distance
    from imm.sampling import generate, sampler_of

    cfg, model, state = steps_study.trained(job, cache)
    if job.set in TOY_SETS:
        n, reference = TOY_N, TOY_SETS[job.set](TOY_N, torch.Generator().manual_seed(10_000))
    else:
        n, reference = 5000, load_data(cfg.data).heldout
    shape = tuple(state["data_shape"])
    ks = IMM_STEPS if job.method == "imm" else FM_STEPS
    with torch.no_grad():
        energy = [energy_distance(generate(model, cfg, n, k, sampler=sampler_of(cfg), seed=7, data_shape=shape),
                                  reference) for k in ks]
    return {"set": job.set, "method": job.method, "seed": job.seed, "train_steps": job.steps, "n": n,
            "sample_steps": list(ks), "energy": energy}


def table(rows: list[dict]) -> tuple[list[str], list[str]]:
    """The markdown table (mean ± spread over seeds, spread = max - min) and the failed checks."""
    lines = ["| set | method | " + " | ".join(f"{k} step{'s' * (k > 1)}" for k in IMM_STEPS) + " |",
             "|---|---|" + "---|" * len(IMM_STEPS)]
    failures = []
    for name in SETS:
        stats = {}
        for method in ("imm", "fm"):
            runs = [r for r in rows if r["set"] == name and r["method"] == method]
            ks = runs[0]["sample_steps"]
            per_k = {k: [r["energy"][i] for r in runs] for i, k in enumerate(ks)}
            stats[method] = {k: (statistics.mean(v), max(v) - min(v)) for k, v in per_k.items()}
            lines.append(f"| {name} | {method.upper()} | " + " | ".join(
                f"{stats[method][k][0]:.5f} ± {stats[method][k][1]:.5f}" if k in stats[method] else ""
                for k in IMM_STEPS) + " |")
        imm, fm = stats["imm"], stats["fm"]
        for k in (4, 8):
            if imm[k][0] > imm[2][0] + max(imm[k][1], imm[2][1]):
                failures.append(f"{name}: IMM at {k} steps ({imm[k][0]:.5f}) worse than at 2 ({imm[2][0]:.5f})")
        if not imm[2][0] < fm[8][0]:
            failures.append(f"{name}: IMM at 2 steps ({imm[2][0]:.5f}) not better than FM at 8 ({fm[8][0]:.5f})")
    return lines, failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=steps_study.OUT)
    p.add_argument("--cache", default="./imm-runs/steps_study/targets")
    args = p.parse_args(argv)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    jobs = [steps_study.Job(name, method, seed, budget) for name, budget in SETS.items()
            for method in ("imm", "fm") for seed in range(SEEDS)]
    jobs.sort(key=lambda j: -j.steps)  # the long digits runs first, so the two workers finish together
    t0, rows = time.perf_counter(), []
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        for row in pool.map(score, jobs, [args.cache] * len(jobs)):
            print(f"{time.perf_counter() - t0:5.0f}s {row['set']} {row['method']} seed {row['seed']}: "
                  + " ".join(f"{k}:{e:.5f}" for k, e in zip(row["sample_steps"], row["energy"], strict=True)), flush=True)
            rows.append(row)
    lines, failures = table(rows)
    Path(args.out, "targets.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    for f in failures:
        print(f"not met: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
