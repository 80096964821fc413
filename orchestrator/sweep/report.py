"""What a finished (or resumed-and-finished) sweep leaves on its MLflow parent run.

The best trial's params (as `best.<key>` tags: params cannot change when a resumed sweep finds a better
trial) and the objective under its own name (stepped by the number of finished trials), a table of all trials
(`trials.csv`), and plots under `plots/`: objective history, parameter importances, parallel coordinates,
intermediate values (what the pruner saw), and quality against sampling steps per value of each swept key
(M, kernel, ...). A plot that cannot be drawn (too few trials) is skipped with a note, never failing the sweep.
"""

from __future__ import annotations

import csv
import math
import re
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from orchestrator.sweep.naming import ROLE_TAG, SWEEP_ID_TAG, swept_values, trial_title, view_key
from orchestrator.sweep.study import best_trials, trial_counts

STEPS_METRIC = re.compile(r"^(energy|fid|fd)/steps_(\d+)$")


def log_to_parent(mlc, parent_id: str, study, sweep, best: list[dict],
                  known: dict[int, dict[str, float]] | None = None) -> list[str]:
    """Tag, log and plot; returns the notes of what was skipped. `known`: the final metrics of the trials this
    driver saw end, by number (only the others are read back from MLflow)."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    if best:
        b = best[0]
        mlc.set_tag(parent_id, "best.trial", ",".join(str(x["number"]) for x in best))
        mlc.set_tag(parent_id, "best.run_id", b["run_id"] or "")
        for k, v in b["params"].items():
            mlc.set_tag(parent_id, f"best.{k}", str(v))
        if len(best) == 1:
            log_best(mlc, parent_id, sweep, b["values"], len(finished))
    run_metrics = trial_metrics(mlc, parent_id, study, finished, known)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="imm-sweep-report-") as tmp:
        out = Path(tmp)
        write_trials_csv(study, sweep, run_metrics, out / "trials.csv")
        plots = out / "plots"
        plots.mkdir()
        notes += draw_optuna_plots(study, sweep, plots)
        notes += draw_steps_plots(study, sweep, run_metrics, plots)
        grid = sweep_grid(mlc, study, sweep, out / GRID_ARTIFACT)
        if notes:
            (out / "report_notes.txt").write_text("\n".join(notes) + "\n")
        mlc.log_artifacts(parent_id, tmp)  # stored once: a resumed sweep's report replaces the older one
    describe_parent(mlc, parent_id, study, sweep, best, finished, grid)
    return notes


def log_best(mlc, parent_id: str, sweep, values: list[float], finished: int) -> None:
    """The objective under its own name on the parent run, stepped by the trials finished: the best so far."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    mlc.log_batch(parent_id, metrics=[Metric(m, float(v), ts, finished)
                                      for m, v in zip(sweep.metrics, values, strict=True)])


def trial_metrics(mlc, parent_id: str, study, finished: list,
                  known: dict[int, dict[str, float]] | None = None) -> dict[int, dict[str, float]]:
    """The finished trials' latest metrics, by trial number: those in `known` as they are, the others read from
    the sweep's trial runs a page at a time (a run not found by its sweep's tags is read on its own). A sweep that
    one driver ran start to end reads none: its report costs no MLflow search however many trials it had."""
    from orchestrator.track import tracking

    known = known or {}
    finished = [t for t in finished if t.number not in known]
    if not any(t.user_attrs.get("mlflow_run_id") for t in finished):
        return dict(known)
    exp_id = mlc.get_run(parent_id).info.experiment_id
    runs = tracking.runs_by_tags(mlc, exp_id, {SWEEP_ID_TAG: study.user_attrs["sweep_id"], ROLE_TAG: "trial"})
    by_id = {r.info.run_id: r.data.metrics for r in runs}
    return {**known, **{t.number: by_id[run_id] if run_id in by_id else mlc.get_run(run_id).data.metrics
                        for t in finished if (run_id := t.user_attrs.get("mlflow_run_id"))}}


GRID_ARTIFACT = "sweep_samples.png"
GRID_ROWS = 12


def sweep_grid(mlc, study, sweep, path: Path) -> Path | None:
    """A row per trial (complete ones best first, then pruned ones; at most GRID_ROWS), each its last evaluation's
    samples at each sampling step count, labelled with its swept values and objective."""
    import optuna
    from PIL import Image

    from orchestrator.track import sample_grids, tracking

    TS = optuna.trial.TrialState
    complete = [t for t in study.get_trials(deepcopy=False, states=[TS.COMPLETE]) if t.values]
    sign = 1 if sweep.directions[0] == "minimize" else -1
    complete.sort(key=lambda t: sign * t.values[0])
    pruned = study.get_trials(deepcopy=False, states=[TS.PRUNED])
    rows = []
    with tempfile.TemporaryDirectory(prefix="imm-grid-") as tmp:
        for t in [*complete, *pruned][:GRID_ROWS]:
            run_id = t.user_attrs.get("mlflow_run_id")
            try:
                png = mlc.download_artifacts(run_id, tracking.SAMPLES_ARTIFACT, tmp)
            except Exception:  # a trial that never evaluated
                continue
            with Image.open(png) as g:
                last = sample_grids.rows_of(g.copy())[-1]
            if t.values:
                value = f"{sweep.metrics[0]} = {t.values[0]:.4g}"
            else:  # what the pruner saw last: provisional
                at = max(t.intermediate_values, default=0)
                value = f"pruned at step {at}" + (f": {t.intermediate_values[at]:.4g}" if at else "")
            rows.append(sample_grids.row(f"{trial_title(t.number, t.params)}; {value}", sample_grids.cells_of(last)))
    if not rows:
        return None
    return sample_grids.save(sample_grids.stack(sample_grids.step_columns(list(sweep.base.eval.steps)), rows), path)


def describe_parent(mlc, parent_id: str, study, sweep, best: list[dict], finished: list, grid: Path | None) -> None:
    """The parent run's description: the outcome in words, a link to the best trial, and the sweep grid."""
    from orchestrator.track import tracking

    counts = ", ".join(f"{n} {s}" for s, n in sorted(trial_counts(study).items()))
    text = f"Sweep `{sweep.name}`: {len(finished)} trials finished ({counts})."
    if len(best) == 1:
        b = best[0]
        exp = mlc.get_run(parent_id).info.experiment_id
        table = tracking.view_link(exp, view_key(sweep.name, study.user_attrs["sweep_id"]))
        text += (f" Best: [trial {b['number']}](#/experiments/{exp}/runs/{b['run_id']}), {sweep.metrics[0]} = "
                 f"{b['values'][0]:.4g}, with {swept_values(b['params'])}."
                 f" [All trials, best first]({table}).")
    if grid is not None:
        text += " Each trial's last samples (rows, best first) at each sampling step count (columns):"
    tracking.describe(mlc, parent_id, text, GRID_ARTIFACT if grid is not None else None)


def write_trials_csv(study, sweep, run_metrics: dict[int, dict], path: Path) -> None:
    keys = [p.key for p in sweep.params]
    quality = sorted({m for ms in run_metrics.values() for m in ms if STEPS_METRIC.match(m) and m not in sweep.metrics},
                     key=_steps_order)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", *sweep.metrics, *keys, *quality, "duration_s", "mlflow_run_id", "error"])
        for t in study.get_trials(deepcopy=False):
            values = list(t.values) if t.values else [""] * len(sweep.metrics)
            dur = t.duration.total_seconds() if t.duration else ""
            ms = run_metrics.get(t.number, {})
            w.writerow([t.number, t.state.name.lower(), *values, *(t.params.get(k, "") for k in keys),
                        *(ms.get(m, "") for m in quality), dur, t.user_attrs.get("mlflow_run_id", ""),
                        t.user_attrs.get("error", "")])


PLOTTED_TRIALS = 200  # trials drawn as a line each (parallel coordinates, intermediate values)
LEGEND_ENTRIES = 20


def plotted_study(study, sweep) -> tuple[Any, str]:
    """The study, or past PLOTTED_TRIALS finished trials an in-memory copy of the best half of that many (by the
    first objective) and of the others evenly spread: a plot with a line per trial stays readable, and quick, at
    10,000 trials. The words to add to such a plot's title."""
    import optuna

    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    if len(finished) <= PLOTTED_TRIALS:
        return study, ""
    sign = 1 if sweep.directions[0] == "minimize" else -1
    complete = sorted((t for t in finished if t.state == optuna.trial.TrialState.COMPLETE and t.values),
                      key=lambda t: sign * t.values[0])
    best = complete[:PLOTTED_TRIALS // 2]
    kept = {t.number for t in best}
    others = [t for t in finished if t.number not in kept]
    spread = [others[i * len(others) // (PLOTTED_TRIALS - len(best))] for i in range(PLOTTED_TRIALS - len(best))]
    shown = optuna.create_study(directions=study.directions)
    shown.add_trials(sorted([*best, *spread], key=lambda t: t.number))
    return shown, f" (the best {len(best)} of {len(finished)} trials and {len(spread)} others)"


def draw_optuna_plots(study, sweep, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as ovm

    notes = []
    lines, which = plotted_study(study, sweep)
    targets = [(None, sweep.metrics[0])] if len(sweep.metrics) == 1 else [
        (lambda t, i=i: t.values[i], m) for i, m in enumerate(sweep.metrics)]
    jobs = []
    for target, name in targets:
        slug = _slug(name)
        jobs += [
            (f"history_{slug}.png", lambda target=target, name=name: ovm.plot_optimization_history(
                study, target=target, target_name=name)),
            (f"importances_{slug}.png", lambda target=target, name=name: ovm.plot_param_importances(
                study, target=target, target_name=name)),
            (f"parallel_coordinates_{slug}.png", lambda target=target, name=name: ovm.plot_parallel_coordinate(
                lines, target=target, target_name=name)),
        ]
    if len(sweep.metrics) == 1 and any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        jobs.append(("intermediate_values.png", lambda: ovm.plot_intermediate_values(lines)))
    if len(sweep.metrics) > 1:
        jobs.append(("pareto_front.png", lambda: ovm.plot_pareto_front(study, target_names=sweep.metrics)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        for filename, draw in jobs:
            try:
                ax = draw()
                first = ax.flat[0] if hasattr(ax, "flat") else ax
                if which and filename.startswith(("parallel", "intermediate")):
                    first.set_title(first.get_title() + which)
                if first.get_legend() is not None and len(first.get_legend().get_texts()) > LEGEND_ENTRIES:
                    first.get_legend().remove()  # a "Trial N" entry per line says nothing at this many
                fig = first.figure
                fig.set_size_inches(9, 5.5)
                fig.tight_layout()
                fig.savefig(out / filename, dpi=110)
                matplotlib.pyplot.close(fig)
            except Exception as e:  # too few trials, a constant param, ...: skip the plot, keep the sweep
                notes.append(f"{filename}: skipped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return notes


def draw_steps_plots(study, sweep, run_metrics: dict[int, dict], out: Path) -> list[str]:
    """Quality against sampling steps, one line per value of a swept key (the mean over its complete trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    complete = {t.number: t for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])}
    notes = []
    for family in ("energy", "fid", "fd"):
        per_trial = {n: {int(m.group(2)): v for k, v in ms.items() if (m := STEPS_METRIC.match(k)) and m.group(1) == family}
                     for n, ms in run_metrics.items() if n in complete}
        per_trial = {n: d for n, d in per_trial.items() if d}
        if not per_trial:
            continue
        for p in sweep.params:
            groups: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
            for n, by_steps in per_trial.items():
                if p.key not in complete[n].params:
                    continue
                value = complete[n].params[p.key]
                label = f"{value:.3g}" if isinstance(value, float) else str(value)
                for k, v in by_steps.items():
                    if math.isfinite(v):
                        groups[label][k].append(v)
            if len(groups) < 2 or len(groups) > 10:
                notes.append(f"{family}_vs_steps_by_{_slug(p.key)}.png: skipped ({len(groups)} distinct values)")
                continue
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for label in sorted(groups, key=_natural):
                ks = sorted(groups[label])
                ax.plot(ks, [sum(groups[label][k]) / len(groups[label][k]) for k in ks], marker="o",
                        label=f"{p.key}={label}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sampling steps")
            ax.set_ylabel(f"{family} (mean over complete trials)")
            ax.set_title(f"{family} vs sampling steps by {p.key} ({sweep.name})")
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / f"{family}_vs_steps_by_{_slug(p.key)}.png", dpi=110)
            plt.close(fig)
    return notes


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")


def _steps_order(metric: str):
    m = STEPS_METRIC.match(metric)
    return (m.group(1), int(m.group(2)))


def _natural(label: str):
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)



def format_status(study, storage: str) -> str:
    """The trials of a study as a table (state, objective, params, time) and the best so far."""

    trials = study.get_trials(deepcopy=False)
    metrics = study.user_attrs.get("metrics") or [f"objective_{i}" for i in range(len(study.directions))]
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    summary = ", ".join(f"{n} {s}" for s, n in sorted(trial_counts(study).items())) or "none yet"
    lines = [f"sweep {study.study_name!r} ({storage}): {len(trials)} trial(s): {summary}"]
    header = ["#", "state", *metrics, *keys, "time"]
    rows = []
    for t in trials:
        values = [f"{v:.4g}" for v in t.values] if t.values else ["-"] * len(metrics)
        dur = f"{t.duration.total_seconds():.0f}s" if t.duration else "-"
        params = [_cell(t.params[k]) if k in t.params else "-" for k in keys]
        rows.append([str(t.number), t.state.name.lower(), *values, *params, dur])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    errors = [(t.number, t.user_attrs["error"]) for t in trials if t.user_attrs.get("error")]
    lines += [f"trial {n} error: {e}" for n, e in errors]
    for b in best_trials(study):
        shown = " ".join(f"{m}={v:.4g}" for m, v in zip(metrics, b["values"], strict=True))
        params = " ".join(f"{k}={_cell(v)}" for k, v in b["params"].items())
        lines.append(f"best: trial {b['number']}  {shown}  {params}  (mlflow run {b['run_id']})")
    return "\n".join(lines)


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
