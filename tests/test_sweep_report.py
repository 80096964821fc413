"""The sweep's parent-run report on a hand-made study and real SQLite MLflow runs: best tags and metrics, the
trials table, and the plots (quality against sampling steps per value of a swept key among them)."""

from __future__ import annotations

import csv
from pathlib import Path
from urllib.parse import urlparse

import optuna

from orchestrator.sweep.report import log_to_parent
from orchestrator.sweep.spec import sweep_from_dict
from orchestrator.sweep.study import best_trials, open_study
from orchestrator.track import tracking


def test_report_logs_best_table_and_plots(tmp_path, mlflow_uri):
    sweep = sweep_from_dict({
        "name": "rep",
        "base": {"config": "toy2d", "overrides": [f"storage.root={tmp_path}"]},
        "space": {"imm.group_size": {"choices": [4, 8]}, "imm.kernel": {"choices": ["laplace", "rbf"]}},
        "objective": "energy/steps_1",
        "sampler": "grid",
    })
    client = tracking.client(mlflow_uri)
    exp = tracking.experiment_id(client, "report", tracking.artifact_root(mlflow_uri))
    parent = client.create_run(exp).info.run_id
    study = open_study(sweep, resume=False)
    values = {}
    for i in range(4):
        trial = study.ask()
        params = sweep.suggest(trial)
        run = client.create_run(exp).info.run_id
        # energy falls with the sampling steps; M=8 is better than M=4 and Laplace better than RBF
        e1 = 1.0 / params["imm.group_size"] + (0.0 if params["imm.kernel"] == "laplace" else 0.1)
        for k in (1, 2, 4, 8):
            client.log_metric(run, f"energy/steps_{k}", e1 / k, step=100)
        trial.set_user_attr("mlflow_run_id", run)
        study.tell(trial, e1)
        values[i] = e1
    failed = study.ask()
    sweep.suggest(failed)
    failed.set_user_attr("error", "boom")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)

    best = best_trials(study)
    assert best[0]["params"] == {"imm.group_size": 8, "imm.kernel": "laplace"}
    notes = log_to_parent(client, parent, study, sweep, best)
    run = client.get_run(parent)
    assert run.data.tags["best.imm.group_size"] == "8" and run.data.tags["best.imm.kernel"] == "laplace"
    assert run.data.tags["best.run_id"] == best[0]["run_id"]
    assert run.data.metrics["energy/steps_1"] == min(values.values()) == 0.125
    assert client.get_metric_history(parent, "energy/steps_1")[0].step == 5  # finished trials so far

    root = Path(urlparse(run.info.artifact_uri).path)
    with (root / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["complete"] * 4 + ["fail"]
    assert rows[4]["error"] == "boom"
    header = rows[0].keys()
    assert len(header) == len(set(header))  # the objective is not repeated among the quality columns
    assert {"energy/steps_1", "energy/steps_8", "imm.group_size", "mlflow_run_id"} <= set(header)
    plots = {p.name for p in (root / "plots").iterdir()}
    assert {"history_energy_steps_1.png", "importances_energy_steps_1.png", "parallel_coordinates_energy_steps_1.png",
            "energy_vs_steps_by_imm_group_size.png", "energy_vs_steps_by_imm_kernel.png"} <= plots, (plots, notes)
    assert all((root / "plots" / p).stat().st_size > 10_000 for p in plots)


def test_a_big_sweep_reads_its_runs_a_page_at_a_time_and_plots_a_readable_share(tmp_path, mlflow_uri, monkeypatch):
    """At thousands of trials the report reads the trial runs' metrics in pages (not a call per trial), and the plots
    with a line per trial draw the best half of PLOTTED_TRIALS and the others evenly spread, saying so."""
    from orchestrator.sweep import report
    from orchestrator.sweep.naming import ROLE_TAG, SWEEP_ID_TAG

    monkeypatch.setattr(report, "PLOTTED_TRIALS", 10)
    monkeypatch.setattr(tracking, "SEARCH_PAGE", 4)
    sweep = sweep_from_dict({
        "name": "big", "base": {"config": "toy2d", "overrides": [f"storage.root={tmp_path}"]},
        "space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "imm.b": {"low": 2.0, "high": 8.0}},
        "objective": "energy/steps_1", "sampler": {"name": "random", "seed": 0}})
    client = tracking.client(mlflow_uri)
    exp = tracking.experiment_id(client, "big-report", tracking.artifact_root(mlflow_uri))
    parent = client.create_run(exp).info.run_id
    study = open_study(sweep, resume=False)
    tags = {SWEEP_ID_TAG: study.user_attrs["sweep_id"], ROLE_TAG: "trial"}
    for i in range(30):
        trial = study.ask()
        sweep.suggest(trial)
        run = client.create_run(exp, tags=tags).info.run_id
        client.log_metric(run, "energy/steps_1", 1.0 + i, step=10)
        trial.set_user_attr("mlflow_run_id", run)
        trial.report(2.0 + i, 5)
        study.tell(trial, 1.0 + i)
    searches = []
    search = type(client).search_runs
    monkeypatch.setattr(type(client), "search_runs", lambda self, *a, **k: searches.append(1) or search(self, *a, **k))
    finished = study.get_trials(deepcopy=False)
    assert report.trial_metrics(client, parent, study, finished) == {t.number: {"energy/steps_1": 1.0 + t.number}
                                                                     for t in finished}
    assert len(searches) == 8  # 30 runs, 4 a page: 8 pages, 0 calls per run
    # what the driver saw at each trial's end is not read back: a sweep run by one driver searches nothing
    searches.clear()
    known = {t.number: {"energy/steps_1": -1.0} for t in finished}
    assert report.trial_metrics(client, parent, study, finished, known) == known and searches == []
    partly = report.trial_metrics(client, parent, study, finished, {0: {"energy/steps_1": -1.0}})
    assert partly[0] == {"energy/steps_1": -1.0} and partly[29] == {"energy/steps_1": 30.0} and len(partly) == 30

    shown, which = report.plotted_study(study, sweep)
    numbers = [t.number for t in shown.get_trials(deepcopy=False)]
    assert len(numbers) == 10 and which == " (the best 5 of 30 trials and 5 others)"
    assert sorted(t.values[0] for t in shown.get_trials(deepcopy=False))[:5] == [1.0, 2.0, 3.0, 4.0, 5.0]
    out = tmp_path / "plots"
    out.mkdir()
    assert report.draw_optuna_plots(study, sweep, out) == []
    assert {"parallel_coordinates_energy_steps_1.png", "intermediate_values.png"} <= {p.name for p in out.iterdir()}
