"""Which candidate did the tuning half choose? Ranks a suite sweep's candidates across its 2D sets (issue 29).

A suite sweep (sweeps/toy2d_suite_*.yaml) is a grid of candidates x tuning sets, one run per pair; a sweep ranks
runs, not settings across sets, so the choice is made here. Each candidate's score on a set is its worst energy
distance over 2, 4 and 8 sampling steps (low at 2 steps and not rising after both count), floored at 1e-4 (the
metric's noise floor: it can dip below zero); candidates are ranked by the geometric mean of that score over the
sets, so that no set's scale dominates.

    .venv/bin/python -m benchmarks.reports.suite2d_tuning toy2d_suite_imm [--tracking-uri URI] [--out DIR]

Writes tuning_<sweep>.md and .json to --out (default docs/results/suite2d/, beside the held-out report of
benchmarks/studies/suite2d.py) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

STEPS = (1, 2, 4, 8)
FLOOR = 1e-4
SET_KEY = "data.name"


def score(energy: dict[int, float]) -> float:
    """A candidate's score on one set: its worst energy over 2, 4 and 8 steps, floored."""
    return max(FLOOR, *(energy[k] for k in (2, 4, 8)))


def rank(rows: list[dict]) -> list[dict]:
    """rows: {"candidate": {key: value}, "set": str, "energy": {steps: value}} -> candidates, best first, each with
    its per-set energies and its geometric-mean score (only candidates that finished on every set are ranked)."""
    sets = sorted({r["set"] for r in rows})
    by: dict[str, dict] = {}
    for r in rows:
        key = json.dumps(r["candidate"], sort_keys=True)
        by.setdefault(key, {"candidate": r["candidate"], "sets": {}})["sets"][r["set"]] = r["energy"]
    ranked = [c for c in by.values() if set(c["sets"]) == set(sets)]
    for c in ranked:
        c["score"] = math.exp(sum(math.log(score(c["sets"][s])) for s in sets) / len(sets))
    return sorted(ranked, key=lambda c: c["score"])


def sweep_rows(uri: str, sweep: str, keys: list[str]) -> list[dict]:
    """The finished trials of `sweep` in the tracking store: their searched settings (`keys`), set and energies."""
    from orchestrator.sweep.naming import ROLE_TAG, SWEEP_TAG
    from orchestrator.track import tracking

    mlc = tracking.client(uri)
    exp_ids = [e.experiment_id for e in mlc.search_experiments()]
    runs = mlc.search_runs(exp_ids, filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}'", max_results=5000)
    rows = []
    for r in runs:
        if r.data.tags.get(ROLE_TAG) != "trial" or r.info.status != "FINISHED":
            continue
        metrics = r.data.metrics
        if not all(f"energy/steps_{k}" in metrics for k in STEPS):
            continue
        searched = {k: r.data.params[k] for k in keys}
        rows.append({"candidate": {k: v for k, v in searched.items() if k != SET_KEY}, "set": searched[SET_KEY],
                     "energy": {k: metrics[f"energy/steps_{k}"] for k in STEPS}})
    return rows


def table(ranked: list[dict]) -> str:
    sets = sorted(ranked[0]["sets"]) if ranked else []
    lines = ["| rank | candidate | score | " + " | ".join(sets) + " |", "|---|---|---|" + "---|" * len(sets)]
    for i, c in enumerate(ranked, 1):
        name = " ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(c["candidate"].items()))
        cells = [" / ".join(f"{c['sets'][s][k]:.4f}" for k in STEPS) for s in sets]
        lines.append(f"| {i} | {name} | {c['score']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from orchestrator.sweep.spec import load_sweep

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="the sweep's name; its file is sweeps/<name>.yaml")
    ap.add_argument("--tracking-uri", default=None, help="the MLflow store (default: the embedded one)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/suite2d"))
    args = ap.parse_args(argv)
    from orchestrator.track import tracking

    keys = [p.key for p in load_sweep(Path("sweeps") / f"{args.sweep}.yaml").params]
    ranked = rank(sweep_rows(tracking.default_tracking_uri(args.tracking_uri), args.sweep, keys))
    if not ranked:
        print(f"no candidate of sweep {args.sweep!r} finished on every set", file=sys.stderr)
        return 1
    text = (f"Sweep `{args.sweep}`: each cell is the energy distance at {' / '.join(map(str, STEPS))} steps; the score "
            "is the geometric mean over the sets of the worst of 2, 4 and 8 steps (lower is better).\n\n"
            + table(ranked))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"tuning_{args.sweep}.md").write_text(text)
    (args.out / f"tuning_{args.sweep}.json").write_text(json.dumps(ranked, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
