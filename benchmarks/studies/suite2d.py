"""Do the shipped 2D defaults hold on data they were not tuned on? Every method at its shipped toy2d settings on a
half of the 2D suite (imm/data/toy2d.py), several seeds, scored at 1, 2, 4 and 8 sampling steps (issue 29).

Each (method, set, seed) trains the toy2d config with only `method`, `data.name` and `train.seed` changed, and is
scored by the energy distance of 4000 samples to 4000 held-out points (the mean of two sampling seeds). The report
gives each set's mean and spread over seeds, the median over sets, and the checks the defaults are held to:

  imm_2_vs_fm_8      IMM at 2 steps no worse than flow matching at 8 Euler steps (median over sets)
  imm_not_rising     IMM's score not rising from 2 to 4 to 8 steps by more than the seed spread (or the metric's
                     noise floor, where that is larger), on every set
  meanflow_2_vs_fm_2 MeanFlow at 2 steps better than flow matching at 2, on the median and on >= 80% of the sets

    .venv/bin/python -m benchmarks.studies.suite2d                  # the held-out half, 5 methods, 3 seeds (~2 h,
                                                                    # 2 cores; TVM is an hour of it)
    .venv/bin/python -m benchmarks.studies.suite2d --half tuning    # the tuning half
    .venv/bin/python -m benchmarks.studies.suite2d --methods --distill meanflow --keep   # MeanFlow from each set's
                                                                    # flow-matching teacher, added to the published
                                                                    # report
    .venv/bin/python -m benchmarks.studies.suite2d --quick          # one held-out set, IMM and FM, one seed: the
                                                                    # first check only (CI's slow tests: ~1 minute)

Trained results are cached under --cache (rerunning resumes); tables.md and results.json go to --out (default
docs/results/suite2d; --keep: with the results already there of the methods not run now); exit 1 when a check fails
(--quick: when the first does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from benchmarks.studies.common import quality, train_ema, within

STEPS = (1, 2, 4, 8)
METHODS = ("imm", "fm", "meanflow", "shortcut", "tvm")
DISTILLERS = ("meanflow", "tvm")  # the methods that train from a teacher (train.teacher)
N_EVAL = 4000
QUICK_SET = "grid"  # the held-out set the quick check trains on
DISTILLED = " (distilled)"  # the row of a method trained from its set's flow-matching teacher (--distill)
OUT = Path("docs/results/suite2d")  # where the report is published (suite2d_tuning's tables go there too)


def job_config(method: str, data: str, seed: int, n_heldout: int = N_EVAL, teacher: str | None = None,
               extra: tuple[str, ...] = ()):
    """The toy2d config with only the method, set and seed changed (and the held-out size the score uses; a
    distilled job's train.teacher; a study's `extra` overrides); the 2D studies (restart_grids, restart_bias,
    flow_map_defaults) train theirs with it too."""
    from imm.config import load_config

    return load_config("toy2d", [f"method={method}", f"data.name={data}", f"train.seed={seed}",
                                 f"data.n_heldout={n_heldout}", "eval.every=1000000", "eval.steps=[1]",
                                 *([f"train.teacher={teacher}"] if teacher else []), *extra])


def teacher_checkpoint(data: str, cache: str) -> str:
    """The set's teacher for the distilled rows: toy2d's flow matching at the shared budget (seed 0), trained once
    under `cache` as a checkpoint train.teacher loads."""
    import io

    import torch

    from imm.train import train
    from imm.training.loop import CHECKPOINT_FILE

    cfg = job_config("fm", data, 0)
    cfg.train.out_dir = str(cache_file(cache, cfg).with_suffix(""))
    checkpoint = Path(cfg.train.out_dir) / CHECKPOINT_FILE
    if not checkpoint.is_file():
        torch.set_num_threads(1)
        train(cfg, device="cpu", stream=io.StringIO())
    return str(checkpoint)


def rank(method: str) -> tuple[int, bool]:
    """Where a method's rows go: METHODS' order, each distilled row after its method's."""
    base = method.removesuffix(DISTILLED)
    return METHODS.index(base), base != method


def cache_file(cache: str, cfg) -> Path:
    """Where a job's result is kept: named by its method, set and seed and a digest of its resolved config (less the
    other methods' sections), so that a changed default is trained again rather than read back."""
    import hashlib

    from omegaconf import OmegaConf

    from imm.methods import METHODS

    others = {m.section for m in METHODS.values() if m.section and m.name != cfg.method}  # not this run's business
    kept = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in others}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache) / f"{cfg.method}-{cfg.data.name}-{cfg.train.seed}-{digest}.json"


def score(method: str, data: str, seed: int, cache: str) -> dict:
    """The energy distance at each of STEPS for one trained (method, set, seed), cached as JSON; "M (distilled)"
    trains M from the set's teacher (teacher_checkpoint)."""
    base = method.removesuffix(DISTILLED)
    cfg = job_config(base, data, seed, teacher=teacher_checkpoint(data, cache) if base != method else None)
    return scored(cfg, cache, method=method, set=data, seed=seed)


def scored(cfg, cache: str, **labels) -> dict:
    """`cfg` trained on one CPU thread and scored at each of STEPS, as {**labels, train_s, energy}: read back from
    `cache` (cache_file) if it was trained before, else trained and written there."""
    out = cache_file(cache, cfg)
    if out.is_file():
        return json.loads(out.read_text())
    import torch

    torch.set_num_threads(1)
    from imm.data import load_data
    from imm.methods import build_model

    state = train_ema(cfg)
    model = build_model(cfg, tuple(state["data_shape"]), state["sigma_d"])
    model.load_state_dict(state["ema"])
    heldout = load_data(cfg.data).heldout
    energy = [quality(model.eval(), cfg, None, k, N_EVAL, (2,), heldout) for k in STEPS]
    result = {**labels, "train_s": state["train_s"], "energy": energy}
    out.write_text(json.dumps(result))
    return result


def summary(results: list[dict]) -> dict:
    """{method: {set: (mean per step, spread per step)}} over seeds."""
    by: dict = {}
    for r in results:
        by.setdefault(r["method"], {}).setdefault(r["set"], []).append(r["energy"])
    return {m: {s: ([statistics.fmean(v) for v in zip(*runs, strict=True)],
                    [max(v) - min(v) for v in zip(*runs, strict=True)]) for s, runs in sets.items()}
            for m, sets in by.items()}


def median_over_sets(summ: dict, method: str, step: int) -> float:
    i = STEPS.index(step)
    return statistics.median(mean[i] for mean, _ in summ[method].values())


def noise_floor(name: str, draws: int = 8) -> float:
    """The metric's noise floor on this set (imm.metrics.noise_floor: exact draws of N_EVAL points scored as a model's
    are, against the same held-out points); spirals reads up to 0.0014 for exact samples."""
    from imm.data import load_data
    from imm.data.toy2d import TOY_SETS
    from imm.metrics import noise_floor as floor

    return floor(TOY_SETS[name], load_data(job_config("fm", name, 0).data).heldout, N_EVAL, draws, average=2)


def checks(summ: dict, floors: dict[str, float] | None = None) -> dict[str, bool]:
    """The properties the shipped defaults are held to, for the methods that were run; `floors`: each set's
    noise_floor (0 where not given)."""
    floors = floors or {}
    out = {}
    if {"imm", "fm"} <= set(summ):
        out["imm_2_vs_fm_8"] = median_over_sets(summ, "imm", 2) <= median_over_sets(summ, "fm", 8)
    if "imm" in summ:
        i2, i4, i8 = (STEPS.index(k) for k in (2, 4, 8))
        out["imm_not_rising"] = all(within(mean, spread, i2, i4, floors.get(s, 0.0)) and
                                    within(mean, spread, i4, i8, floors.get(s, 0.0))
                                    for s, (mean, spread) in summ["imm"].items())
    if {"meanflow", "fm"} <= set(summ):
        i2 = STEPS.index(2)
        wins = [summ["meanflow"][s][0][i2] < summ["fm"][s][0][i2] for s in summ["meanflow"]]
        out["meanflow_2_vs_fm_2"] = (median_over_sets(summ, "meanflow", 2) < median_over_sets(summ, "fm", 2)
                                     and sum(wins) >= 0.8 * len(wins))
    return out


def seed_counts(results: list[dict]) -> str:
    """How many training seeds each method has: "3", or "3 (tvm: 1)" where methods differ."""
    per = {m: len({r["seed"] for r in results if r["method"] == m}) for m in dict.fromkeys(r["method"] for r in results)}
    common = statistics.mode(per.values())
    fewer = ", ".join(f"{m}: {n}" for m, n in per.items() if n != common)
    return f"{common}" + (f" ({fewer})" if fewer else "")


def kept_results(out: Path, methods: list[str]) -> list[dict]:
    """OUT/results.json's results of the methods not run now (--keep: a method added to a published report)."""
    earlier = out / "results.json"
    return [r for r in json.loads(earlier.read_text()) if r["method"] not in methods] if earlier.is_file() else []


def report(summ: dict, results: list[dict], out: Path, floors: dict[str, float] | None = None) -> str:
    lines = [f"Energy distance to held-out points ({N_EVAL} samples, 2 sampling seeds), mean ± spread over "
             f"{seed_counts(results)} training seed(s); the toy2d config with method, data.name and train.seed "
             "changed.", "",
             "| method | set | " + " | ".join(f"{k} step{'s' * (k > 1)}" for k in STEPS) + " |",
             "|---|---|" + "---|" * len(STEPS)]
    for m, sets in summ.items():
        one_seed = len({r["seed"] for r in results if r["method"] == m}) == 1  # no spread to show
        for s, (mean, spread) in sets.items():
            lines.append(f"| {m} | {s} | " + " | ".join(f"{a:.4f}" if one_seed else f"{a:.4f} ± {b:.4f}"
                                                         for a, b in zip(mean, spread, strict=True)) + " |")
        lines.append(f"| **{m}** | **median over sets** | "
                     + " | ".join(f"**{median_over_sets(summ, m, k):.4f}**" for k in STEPS) + " |")
    if floors:
        lines += ["", "The metric's noise floor (twice the std of the energy of exact draws of the set against the same "
                  "held-out points): " + ", ".join(f"{s} {f:.4f}" for s, f in floors.items()) + "."]
    lines += ["", "| check | met |", "|---|---|"] + [f"| {k} | {v} |" for k, v in checks(summ, floors).items()]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return text


def main(argv: list[str] | None = None) -> int:
    from imm.data.toy2d import HELDOUT, TUNING

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", choices=["heldout", "tuning"], default="heldout")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--quick", action="store_true", help=f"IMM and FM on {QUICK_SET}, one seed: the first check")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--distill", nargs="*", default=[], choices=DISTILLERS,
                    help="these methods also from each set's flow-matching teacher (rows 'M (distilled)')")
    ap.add_argument("--keep", action="store_true", help="keep OUT/results.json's results of the methods not run now")
    ap.add_argument("--cache", default="imm-runs/suite2d", help="trained results, reused when rerun")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    sets = [QUICK_SET] if args.quick else list(HELDOUT if args.half == "heldout" else TUNING)
    methods, seeds = (["imm", "fm"], 1) if args.quick else (args.methods + [m + DISTILLED for m in args.distill],
                                                            args.seeds)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    jobs = [(m, s, seed, args.cache) for s in sets for m in methods for seed in range(seeds)]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        if args.distill:  # each set's teacher first, once
            list(pool.map(teacher_checkpoint, sets, [args.cache] * len(sets)))
        results = list(pool.map(score, *zip(*jobs, strict=True)))
    if args.keep:
        results = sorted(results + kept_results(args.out, methods), key=lambda r: rank(r["method"]))
    summ = summary(results)
    floors = {s: noise_floor(s) for s in sets}
    print(report(summ, results, args.out, floors))
    held = checks(summ, floors)
    return 0 if (held["imm_2_vs_fm_8"] if args.quick else all(held.values())) else 1


if __name__ == "__main__":
    sys.exit(main())
