"""The table and sample grids of `imm-orch sweep sweeps/flow_maps.yaml` (and its distilled sweeps): few-step
methods on digits, from scratch and distilled from a teacher, several seeds.

Reads the sweeps' complete trials from MLflow (their last evaluation: energy/steps_K and fd/steps_K at K = 1, 2,
4, 8), writes mean and spread (max - min) over the seeds per method into OUT/tables.md and results.json, and one
sample grid per method (its first seed's model at 1 and 2 steps) as OUT/METHOD_steps_K.png; each model is also
scored again at 2 steps on 5 fresh sample draws, on both metrics (the runs' own evaluations draw one). A run trained
from a teacher (its imm.teacher tag) is its own row, "METHOD (distilled)", and one that started from a trained
network (train.init_from) "METHOD (distilled, warm-started)"; MeanFlow with the model's own tangent
(meanflow.tangent=model) is the row "imf". With --keep, rows of OUT/results.json that these sweeps do not make (runs
of an earlier store) stay, marked in the table, and their grids are not redrawn.

    .venv/bin/imm-orch sweep sweeps/flow_maps.yaml              # ~35 min on 2 cores
    .venv/bin/imm-orch sweep sweeps/flow_maps_distilled.yaml    # after its teacher (the file's header)
    .venv/bin/imm-orch sweep sweeps/flow_maps_fmm.yaml          # the same teacher
    .venv/bin/imm-orch sweep sweeps/flow_maps_imf.yaml          # improved MeanFlow
    .venv/bin/imm-orch sweep sweeps/flow_maps_warm.yaml         # TVM distilled from the teacher's own network
    .venv/bin/python -m benchmarks.reports.flow_maps_report [--sweep SWEEP ...] [--keep] [--tracking-uri URI]
                                                            [--out DIR]

OUT defaults to docs/results/flow_maps; docs/flow_maps/README.md writes the results up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
from pathlib import Path

from orchestrator.registry.models import load_model
from orchestrator.sweep.naming import ROLE_TAG, STATE_TAG, SWEEP_TAG
from orchestrator.track import tracking
from orchestrator.track.provenance import TEACHER_MODEL_TAG

STEPS = (1, 2, 4, 8)
METRICS = ("energy", "fd")
GRID_STEPS = (1, 2)
DRAWS = 5  # fresh sample draws per model for the redrawn 2-step score
REDRAWN = ("energy", "fd", "copying")  # what each fresh draw is scored on
TEACHER_STEPS = (32, 128)  # the teacher's sampling steps in the report
DRAW_SEED = 10_000  # draw i's first batch seed is DRAW_SEED (i + 1): no batch seed of one draw is another's
DIGITS_N_SAMPLES = 1000  # eval.n_samples of rows recorded without it (the digits config's)


# rows in this order, each followed by its distilled row
ORDER = ("imm", "meanflow", "imf", "tvm", "fmm", "shortcut", "cm", "fm")
VARIANT = {"fmm": "fmm.objective"}  # methods whose rows are split by the value of a key


def row_of(config: dict[str, str], distilled: bool) -> str:
    """A run's row, from its flattened config: its method (imf for MeanFlow with the model's tangent), VARIANT's
    value, ", no anchor" for fmm runs without fmm.anchor (the runs from before the key existed trained without it),
    and in brackets "distilled" for a run with a teacher, "warm-started" for one started from a trained network."""
    method = config["method"]
    if method == "meanflow" and config.get("meanflow.tangent") == "model":
        method = "imf"
    row = method + (f" {config[VARIANT[method]]}" if VARIANT.get(method) in config else "")
    row += ", no anchor" if method == "fmm" and config.get("fmm.anchor", "False") == "False" else ""
    how = [w for w, yes in (("distilled", distilled), ("warm-started", config.get("train.init_from") not in
                                                           (None, "None", ""))) if yes]
    return row + (f" ({', '.join(how)})" if how else "")


def run_config(client, run_id: str) -> dict[str, str]:
    """The run's resolved config (its config.yaml artifact), flattened as its params are: trials log only their
    swept and identity keys as params."""
    import tempfile

    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory() as tmp:
        cfg = OmegaConf.load(client.download_artifacts(run_id, "config.yaml", tmp))
    return tracking.flatten(OmegaConf.to_container(cfg, resolve=True))


def trials(client, sweep: str) -> list:
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{STATE_TAG}` = 'complete'", max_results=1000)
    return [r for r in runs if r.data.tags.get(ROLE_TAG, "trial") == "trial"]


def table(runs, configs: dict[str, dict[str, str]]) -> dict[str, dict[str, list[float]]]:
    """row -> {"energy/steps_K": [value per seed], ..., "seeds": [...], "run_ids": [...]}; a row is the method, or
    "METHOD (distilled)" for runs trained from a teacher, and VARIANT's methods name their variant ("fmm eulerian").
    configs: each run's flattened config by run id (run_config)."""
    out: dict[str, dict[str, list]] = {}
    for r in sorted(runs, key=lambda r: int(r.data.params.get("train.seed", 0))):
        row = row_of(configs[r.info.run_id], bool(r.data.tags.get(TEACHER_MODEL_TAG)))
        m = out.setdefault(row, {"seeds": [], "run_ids": []})
        m["n_samples"] = int(configs[r.info.run_id].get("eval.n_samples", DIGITS_N_SAMPLES))
        m["seeds"].append(int(r.data.params.get("train.seed", 0)))
        m["run_ids"].append(r.info.run_id)
        for metric in METRICS:
            for k in STEPS:
                m.setdefault(f"{metric}/steps_{k}", []).append(r.data.metrics.get(f"{metric}/steps_{k}", float("nan")))
    return out


def rank(row: str) -> int:
    """Where a row goes: ORDER's place of its method (unknown methods last)."""
    method = row.split(" ")[0]
    return ORDER.index(method) if method in ORDER else len(ORDER)


def file_stem(row: str) -> str:
    """A row's sample-grid file name: "tvm (distilled, warm-started)" -> tvm_distilled_warm_started."""
    return re.sub(r"[^a-z0-9]+", "_", row.lower()).strip("_")


def cell(values: list[float]) -> str:
    """mean ± spread, 3 significant digits (4 decimals below 1)."""
    mean, spread = statistics.fmean(values), max(values) - min(values)
    fmt = (lambda v: f"{v:.4f}") if abs(mean) < 1 else (lambda v: f"{v:.3g}" if v >= 100 else f"{v:.2f}")
    return f"{fmt(mean)} ± {fmt(spread)}" if len(values) > 1 else fmt(mean)


def redrawn(evaluator, model, train, draws: int = DRAWS) -> dict[str, list[float]]:
    """One trained model's 2-step scores over `draws` fresh sample draws: {metric: [value per draw]}, from its
    run's evaluation (imm.metrics.evaluator.Evaluator) on other seeds' samples than the run's eval.seed. Their spread
    is how far a metric moves with no change to the model, their mean a score with that noise averaged down.
    "copying": the samples' mean distance to their nearest training digit (nearest_distance)."""
    scores = []
    for i in range(draws):
        ev = evaluator(model, steps=[2], seed=DRAW_SEED * (i + 1))
        scores.append({**ev.metrics, "copying/steps_2": nearest_distance(ev.samples[2], train)})
    return {metric: [s[f"{metric}/steps_2"] for s in scores] for metric in REDRAWN}


def nearest_distance(x, ref) -> float:
    """Mean pixel distance from each of x to its nearest in ref. Against the training digits it tells a model that
    copies them (the metric fd rewards it: its reference is the training set) from one that generalises: real
    unseen digits lie at the held-out digits' distance (the report prints it)."""
    import torch

    return float(torch.cat([torch.cdist(c.flatten(1), ref.flatten(1)).min(1).values for c in x.split(1000)]).mean())


def teacher_scores(evaluator, model, train, steps=TEACHER_STEPS) -> dict[str, float]:
    """The distilled rows' teacher, scored as its students are (its run's evaluation, one fresh draw) at `steps`
    sampling steps: {"energy/steps_K", "fd/steps_K", "copying/steps_K"}."""
    ev = evaluator(model, steps=list(steps), seed=DRAW_SEED)
    return {**ev.metrics, **{f"copying/steps_{k}": nearest_distance(ev.samples[k], train) for k in steps}}


def markdown(res: dict, order: list[str], heldout_copying: float | None = None,
             teachers: dict[str, dict[str, float]] | None = None) -> str:
    """Both metrics' tables, and the redrawn one (heldout_copying: the held-out digits' own distance to their
    nearest training digit; teachers: teacher_scores by URI); a kept row (--keep) is marked and footnoted with its
    sample count."""
    lines = []
    for metric, what in (("energy", "energy distance on pixels to the 539 held-out digits"),
                         ("fd", "Frechet distance in the features of the project's digits classifier")):
        lines += [f"**{metric}** ({what}; mean ± spread over seeds {res[order[0]]['seeds']}):", "",
                  "| method | " + " | ".join(f"{k} step{'s' if k > 1 else ''}" for k in STEPS) + " |",
                  "|---|" + "---|" * len(STEPS)]
        for m in order:
            name = f"{m} *" if res[m].get("kept") else m
            lines.append(f"| {name} | " + " | ".join(cell(res[m][f"{metric}/steps_{k}"]) for k in STEPS) + " |")
        lines.append("")
    redrawn_rows = [m for m in order if "redrawn/energy/steps_2" in res[m]]
    if redrawn_rows:
        lines += [f"**2 steps, redrawn**: each model scored on {DRAWS} fresh draws of samples; mean ± spread over "
                  "seeds of the per-model means, and the spread of one model's draws (its first seed's): how far the "
                  "metric moves with no change to the model. copying: the samples' mean distance to their nearest "
                  "training digit" + (f" (the held-out digits' own: {heldout_copying:.2f}; below it, a model "
                                      "reproduces training digits)" if heldout_copying else "") + ".", "",
                  "| method | energy, mean of draws | one model's draws, spread | fd, mean of draws | one model's "
                  "draws, spread | copying |", "|---|---|---|---|---|---|"]
        for m in redrawn_rows:
            cells = []
            for metric in REDRAWN:
                draws = res[m][f"redrawn/{metric}/steps_2"]
                cells.append(cell([statistics.fmean(d) for d in draws]))
                if metric != "copying":
                    cells.append(cell([max(draws[0]) - min(draws[0])]))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    for uri, scores in (teachers or {}).items():
        lines += [f"**The teacher** ({uri}; one draw) at " + " and ".join(str(k) for k in TEACHER_STEPS) + " steps: " +
                  "; ".join(f"{metric} " + " and ".join(cell([scores[f'{metric}/steps_{k}']]) for k in TEACHER_STEPS)
                            for metric in REDRAWN) + ".", ""]
    kept = [m for m in order if res[m].get("kept")]
    if kept:
        counts = sorted({res[m].get("n_samples", DIGITS_N_SAMPLES) for m in kept})
        lines += [f"\\* kept from an earlier report: runs not in this store, scored with {counts} samples per step "
                  "count.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", nargs="+", default=["flow_maps", "flow_maps_distilled", "flow_maps_fmm", "flow_maps_imf",
                                                  "flow_maps_warm"],
                   help="sweeps whose trials are the rows (a sweep with no complete trials is left out)")
    p.add_argument("--keep", action="store_true",
                   help="keep OUT/results.json's rows that these sweeps do not make (runs of an earlier store)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--out", default="docs/results/flow_maps")
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking.default_tracking_uri(args.tracking_uri)
    client = tracking.client(uri)
    runs = [r for sweep in args.sweep for r in trials(client, sweep)]
    res = table(runs, {r.info.run_id: run_config(client, r.info.run_id) for r in runs})
    if not res:
        raise SystemExit(f"no complete trials of sweeps {args.sweep} in {uri}")
    out = Path(args.out)
    if args.keep and (out / "results.json").exists():
        for row, earlier in json.loads((out / "results.json").read_text()).items():
            res.setdefault(row, {**earlier, "kept": True})
    order = sorted(res, key=lambda row: (rank(row), row))
    out.mkdir(parents=True, exist_ok=True)
    from imm.data import load_data
    from imm.metrics.evaluator import Evaluator
    from imm.sampling.pictures import image_grid_png

    data = None  # every run's (the same digits split): read once
    for m in (m for m in order if not res[m].get("kept")):
        per_model = []
        for i, run_id in enumerate(res[m]["run_ids"]):
            gen = load_model(f"runs:/{run_id}", tracking_uri=uri, device="cpu")
            data = load_data(gen.cfg.data) if data is None else data
            if i == 0:
                for k in GRID_STEPS:
                    image_grid_png(gen.sample(64, steps=k, seed=0), out / f"{file_stem(m)}_steps_{k}.png")
            per_model.append(redrawn(Evaluator(gen.cfg, data), gen.model, data.train))
        for metric in REDRAWN:
            res[m][f"redrawn/{metric}/steps_2"] = [d[metric] for d in per_model]
    (out / "results.json").write_text(json.dumps(res, indent=1))
    teachers = {}
    for teacher in sorted({r.data.tags[TEACHER_MODEL_TAG] for r in runs if r.data.tags.get(TEACHER_MODEL_TAG)}):
        gen = load_model(teacher, tracking_uri=uri, device="cpu")
        data = load_data(gen.cfg.data) if data is None else data
        teachers[teacher] = teacher_scores(Evaluator(gen.cfg, data), gen.model, data.train)
    body = markdown(res, order, heldout_copying=nearest_distance(data.heldout, data.train) if data else None,
                    teachers=teachers)
    (out / "tables.md").write_text(body)
    print(body)


if __name__ == "__main__":
    main()
