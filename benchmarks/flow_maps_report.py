"""The table and sample grids of `imm-orch sweep sweeps/flow_maps.yaml` (and its distilled sweeps): few-step
methods on digits, from scratch and distilled from a teacher, several seeds.

Reads the sweeps' complete trials from MLflow (their last evaluation: energy/steps_K and fd/steps_K at K = 1, 2,
4, 8), writes mean and spread (max - min) over the seeds per method into OUT/tables.md and results.json, and one
sample grid per method (its first seed's model at 1 and 2 steps) as OUT/METHOD_steps_K.png. A run trained from a
teacher (its imm.teacher tag) is its own row, "METHOD (distilled)".

    .venv/bin/imm-orch sweep sweeps/flow_maps.yaml              # ~35 min on 2 cores
    .venv/bin/imm-orch sweep sweeps/flow_maps_distilled.yaml    # after its teacher (the file's header)
    .venv/bin/imm-orch sweep sweeps/flow_maps_fmm.yaml          # the same teacher
    .venv/bin/python benchmarks/flow_maps_report.py [--sweep SWEEP ...] [--tracking-uri URI] [--out docs/flow_maps]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from orchestrator import tracking
from orchestrator.models import load_model
from orchestrator.provenance import TEACHER_MODEL_TAG
from orchestrator.sweep.naming import ROLE_TAG, STATE_TAG, SWEEP_TAG

STEPS = (1, 2, 4, 8)
METRICS = ("energy", "fd")
GRID_STEPS = (1, 2)


ORDER = ("imm", "meanflow", "tvm", "fmm", "shortcut", "cm", "fm")  # rows in this order, each followed by its distilled row
VARIANT = {"fmm": "fmm.objective"}  # methods whose rows are split by the value of a key


def row_of(config: dict[str, str], distilled: bool) -> str:
    """A run's row, from its flattened config: its method, VARIANT's value, ", no anchor" for fmm runs without
    fmm.anchor (the runs from before the key existed trained without it), and " (distilled)" for a run with a
    teacher."""
    method = config["method"]
    row = method + (f" {config[VARIANT[method]]}" if VARIANT.get(method) in config else "")
    row += ", no anchor" if method == "fmm" and config.get("fmm.anchor", "False") == "False" else ""
    return row + (" (distilled)" if distilled else "")


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
    """A row's sample-grid file name: "tvm (distilled)" -> tvm_distilled."""
    return row.replace(" (distilled)", "_distilled").replace(", ", "_").replace(" ", "_")


def cell(values: list[float]) -> str:
    """mean ± spread, 3 significant digits (4 decimals below 1)."""
    mean, spread = statistics.fmean(values), max(values) - min(values)
    fmt = (lambda v: f"{v:.4f}") if abs(mean) < 1 else (lambda v: f"{v:.3g}" if v >= 100 else f"{v:.2f}")
    return f"{fmt(mean)} ± {fmt(spread)}" if len(values) > 1 else fmt(mean)


def markdown(res: dict, order: list[str]) -> str:
    lines = []
    for metric, what in (("energy", "energy distance on pixels to the 539 held-out digits"),
                         ("fd", "Frechet distance in the features of the project's digits classifier")):
        lines += [f"**{metric}** ({what}; mean ± spread over seeds {res[order[0]]['seeds']}):", "",
                  "| method | " + " | ".join(f"{k} step{'s' if k > 1 else ''}" for k in STEPS) + " |",
                  "|---|" + "---|" * len(STEPS)]
        for m in order:
            lines.append(f"| {m} | " + " | ".join(cell(res[m][f"{metric}/steps_{k}"]) for k in STEPS) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", nargs="+", default=["flow_maps", "flow_maps_distilled", "flow_maps_fmm"],
                   help="sweeps whose trials are the rows (a sweep with no complete trials is left out)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--out", default="docs/flow_maps")
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking.default_tracking_uri(args.tracking_uri)
    client = tracking.client(uri)
    runs = [r for sweep in args.sweep for r in trials(client, sweep)]
    res = table(runs, {r.info.run_id: run_config(client, r.info.run_id) for r in runs})
    if not res:
        raise SystemExit(f"no complete trials of sweeps {args.sweep} in {uri}")
    order = sorted(res, key=lambda row: (rank(row), row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from imm.sampling.pictures import image_grid_png

    for m in order:
        gen = load_model(f"runs:/{res[m]['run_ids'][0]}", tracking_uri=uri, device="cpu")
        for k in GRID_STEPS:
            image_grid_png(gen.sample(64, steps=k, seed=0), out / f"{file_stem(m)}_steps_{k}.png")
    (out / "results.json").write_text(json.dumps(res, indent=1))
    body = markdown(res, order)
    (out / "tables.md").write_text(body)
    print(body)


if __name__ == "__main__":
    main()
