"""The steps study's digits follow-up (issue 16): why IMM at 8 steps could be worse than at 2 on digits, one change
at a time against the shipped digits config at 3000 steps (3 seeds), and the budget (8000 steps, 2 seeds). Each model
is sampled as in the steps study, benchmarks/studies/steps_study.py (pushforward and restart, uniform and eta grids,
1 to 16 steps, two noise seeds); results print one line per model and go to OUT/digits_results.json. About 10 minutes
on 2 cores.

    .venv/bin/python -m benchmarks.studies.steps_study_digits [--out docs/results/steps_study]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from benchmarks.studies import steps_study

EXTRA = {"estimator=u": ["imm.estimator=u"], "M=8": ["imm.group_size=8"], "kernel=rbf": ["imm.kernel=rbf"]}


def run_job(job, cache: str):
    steps_study.ABLATIONS.update(EXTRA)  # in the spawned worker too
    return steps_study.run(job, cache)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=steps_study.OUT)
    p.add_argument("--cache", default="./imm-runs/steps_study/digits")
    args = p.parse_args()
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    Job = steps_study.Job
    jobs = [Job("digits", "imm", s, 8000) for s in range(2)]
    jobs += [Job("digits", "imm", s, 3000, ablation=a) for a in ("", *EXTRA) for s in range(3)]
    t0, out = time.perf_counter(), []
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        for res in pool.map(run_job, jobs, [args.cache] * len(jobs)):
            print(f"{time.perf_counter() - t0:5.0f}s {res.job.key}: " + "  ".join(
                f"{k} " + "/".join(f"{e:.4f}" for e in v) for k, v in res.energy.items()), flush=True)
            out.append(steps_study.result_to_json(res))
    Path(args.out, "digits_results.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
