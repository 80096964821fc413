"""Sweeps on a real local Ray, tracked in a real SQLite MLflow store, with the study in a real journal file:
the tracked sweep, a SIGKILLed orchestrator resumed, and a diverging trial failed while a poor one is pruned."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from orchestrator import cli
from orchestrator.track import tracking

pytestmark = pytest.mark.slow
TINY = ["model.hidden=32", "model.depth=1", "train.steps=40", "train.batch_size=64", "train.log_every=10",
        "train.checkpoint_every=20", "eval.every=20", "eval.n_samples=200", "eval.steps=[1,2]"]


EIGHT_SETS = {"imm.group_size": {"choices": [4, 8]}, "imm.kernel": {"choices": ["laplace", "rbf"]},
              "imm.k": {"low": 8, "high": 9}}


def write_sweep(tmp_path: Path, **changes) -> Path:
    spec = {
        "name": "it",
        "base": {"config": "toy2d", "overrides": [*TINY, f"storage.root={tmp_path / 'runs'}"]},
        "space": {"imm.group_size": {"choices": [4, 8]}, "imm.kernel": {"choices": ["laplace", "rbf"]},
                  "imm.k": {"low": 8, "high": 12}},
        "objective": [{"metric": "energy/steps_1", "direction": "minimize"}],
        "sampler": {"name": "random", "seed": 3},
        "trials": 4,
        "max_concurrent": 2,
    }
    spec.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def load_study(tmp_path: Path, name: str = "it"):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "runs" / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def sweep_runs(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("imm.sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("imm.sweep.role") == "trial"]
    return parents, children


def test_four_trial_sweep_makes_a_parent_run_four_nested_trials_and_a_persisted_study(
        ray_local, mlflow_uri, tmp_path, capsys):
    path = write_sweep(tmp_path)
    t0 = time.perf_counter()
    assert cli.main(["sweep", str(path), "--tracking-uri", mlflow_uri, "--experiment", "sweep-it"]) == 0
    wall = time.perf_counter() - t0
    out = capsys.readouterr().out
    parent_id = re.search(r"^mlflow parent run id: (\w+)$", out, re.M).group(1)
    with capsys.disabled():
        print(f"\n4-trial sweep (2 at a time, 40 steps each): {wall:.1f}s")
    assert "at most 2 at a time" in out

    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    client = tracking.client(mlflow_uri)
    parents, children = sweep_runs(client, "sweep-it")
    assert [p.info.run_id for p in parents] == [parent_id]
    assert len(children) == 4
    by_number = {int(c.data.tags["imm.trial.number"]): c for c in children}
    assert sorted(by_number) == [0, 1, 2, 3]
    for t in study.trials:
        run = by_number[t.number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent_id and run.data.tags["imm.sweep"] == "it"
        assert run.data.tags["imm.trial.state"] == "complete"
        assert run.data.tags["imm.trial.optuna_id"] == str(t._trial_id)
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        for key, value in t.params.items():  # the swept params are the run's params
            assert run.data.params[key] == str(value)
        assert t.values == [run.data.metrics["energy/steps_1"]]
        # a finished trial never runs again: its Ray checkpoints are gone, its final weights are in its run
        assert not (tmp_path / "runs" / "ray" / t.user_attrs["run_name"]).exists()
        assert "imm.checkpoint_path" not in run.data.tags
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/checkpoint.pt"]

    best = min(children, key=lambda r: r.data.metrics["energy/steps_1"])
    assert study.best_trial.number == int(best.data.tags["imm.trial.number"])
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best.run_id"] == best.info.run_id
    assert parent.data.metrics["energy/steps_1"] == best.data.metrics["energy/steps_1"]
    assert parent.data.params["space.imm.group_size"] == "one of [4, 8]"
    artifacts = {f.path for f in client.list_artifacts(parent_id)} | {
        f.path for f in client.list_artifacts(parent_id, "plots")}
    for name in ("sweep.yaml", "search_space.json", "base_config.yaml", "trials.csv",
                 "plots/history_energy_steps_1.png", "plots/parallel_coordinates_energy_steps_1.png"):
        assert name in artifacts, (name, artifacts)
    assert any(a.startswith("plots/energy_vs_steps_by_") for a in artifacts)

    assert cli.main(["status", str(path)]) == 0
    status = capsys.readouterr().out
    assert "4 trial(s): 4 complete" in status
    assert f"best: trial {study.best_trial.number} " in status

    # Without --resume, the same sweep name is refused (nothing is overwritten); --resume with all done is a no-op.
    assert cli.main(["sweep", str(path), "--tracking-uri", mlflow_uri, "--experiment", "sweep-it"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert cli.main(["sweep", str(path), "--resume", "--tracking-uri", mlflow_uri, "--experiment", "sweep-it"]) == 0
    assert "trials: 4 of 4 done" in capsys.readouterr().out
    assert len(load_study(tmp_path).trials) == 4
    assert len(sweep_runs(client, "sweep-it")[1]) == 4


def test_a_killed_orchestrator_resumes_without_rerunning_finished_trials(ray_local, mlflow_uri, tmp_path, capsys,
                                                                        monkeypatch):
    """A SIGKILL and a Ctrl-C of the driver of an 8-trial sweep over 8 parameter sets, each followed by --resume:
    finished trials are never run again, interrupted ones carry on in their own runs (no metric step twice), and
    no two trials share a parameter set (each resume once replayed the sampler's first draws)."""
    import ray

    path = write_sweep(tmp_path, trials=8, space=EIGHT_SETS, sampler={"name": "tpe", "seed": 3, "startup_trials": 2})
    cmd = [sys.executable, "-m", "orchestrator.cli", "sweep", str(path), "--address",
           ray.get_runtime_context().gcs_address, "--tracking-uri", mlflow_uri, "--experiment", "sweep-kill"]
    client = tracking.client(mlflow_uri)
    logs, before = [], {}
    # a SIGKILL (nothing closes anything), then a Ctrl-C (interrupted trials once kept `running`)
    for cycle, (complete_at_kill, sig) in enumerate(((2, signal.SIGKILL), (5, signal.SIGINT))):
        log = tmp_path / f"driver{cycle}.log"
        with log.open("w") as f:
            proc = subprocess.Popen(cmd + (["--resume"] if cycle else []), stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 300
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    trials = load_study(tmp_path).trials
                    # a Ctrl-C once a running trial has opened its run (its task tells the driver the run's id)
                    opened = any(t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs for t in trials)
                    if sum(t.state.name == "COMPLETE" for t in trials) >= complete_at_kill and \
                            (opened or sig == signal.SIGKILL):
                        break
                except (FileNotFoundError, KeyError):  # the orchestrator has not created the study yet
                    pass
                time.sleep(0.5)
            assert proc.poll() is None, log.read_text()[-3000:]
            running = {t.user_attrs["mlflow_run_id"] for t in load_study(tmp_path).trials
                       if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs}
            proc.send_signal(sig)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        logs.append(log.read_text())
        if sig == signal.SIGINT:
            assert proc.returncode == 130, logs[-1][-3000:]
            assert "imm-orch: interrupted (rerun with --resume to continue)" in logs[-1]
            assert running, "no trial was running at the Ctrl-C"
            for run_id in running:
                run = client.get_run(run_id)
                assert (run.info.status, run.data.tags["imm.trial.state"]) == ("KILLED", "interrupted")
        if cycle:  # finished trials are not started again
            assert f"trials: {len(before)} of 8 done" in logs[-1], logs[-1][-3000:]
            for n in before:
                assert not re.search(rf"^trial {n} (started|resumed)", logs[-1], re.M), logs[-1]
        before = {t.number: t for t in load_study(tmp_path).trials if t.state.name == "COMPLETE"}
        time.sleep(5)
    parent_id = re.search(r"MLflow parent run (\w+)", logs[0]).group(1)
    # This driver prints its own job's worker logs: Ray Train's per-report INFO lines must not be among them.
    noise = [ln for log in logs for ln in log.splitlines() if "Reporting training result" in ln]
    assert not noise, noise[:2]
    assert len(before) >= 5, logs[-1][-3000:]
    ended = {n: client.get_run(t.user_attrs["mlflow_run_id"]).info.end_time for n, t in before.items()}

    assert cli.main(["sweep", str(path), "--resume", "--tracking-uri", mlflow_uri, "--experiment", "sweep-kill"]) == 0
    out = capsys.readouterr().out
    assert f"trials: {len(before)} of 8 done" in out
    for n in before:
        assert not re.search(rf"^trial {n} (started|resumed)", out, re.M), out

    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 8
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 8  # every set once
    for n, t in before.items():
        assert study.trials[n].datetime_complete == t.datetime_complete and study.trials[n].values == t.values
        assert client.get_run(t.user_attrs["mlflow_run_id"]).info.end_time == ended[n]
    parents, children = sweep_runs(client, "sweep-kill")
    assert [p.info.run_id for p in parents] == [parent_id]  # the same parent run, finished now
    assert parents[0].info.status == "FINISHED"
    assert sorted(int(c.data.tags["imm.trial.number"]) for c in children) == list(range(8))
    for c in children:  # a trial interrupted by a kill resumed in its own run: no step logged twice
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "train/loss")]
        assert steps == sorted(set(steps)) == [10, 20, 30, 40], (c.data.tags["imm.trial.number"], steps)


def test_a_trial_whose_process_dies_resumes_from_its_checkpoint_in_the_same_run(ray_local, mlflow_uri, tmp_path,
                                                                               capsys, monkeypatch):
    """A one-worker trial trains in its own Ray task (`orchestrator.run.in_process`): the worker SIGKILL of that mode
    kills the task's process. Ray runs the task again (trainer.max_failures=1), and it resumes from the trial's
    last checkpoint into the same MLflow run: no step is logged twice, and the terminal says what happened."""
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("IMM_ORCH_KILL_WORKER", f"step=25,rank=0,marker={marker}")
    path = write_sweep(tmp_path, base={"config": "toy2d", "overrides": [
        *TINY, f"storage.root={tmp_path / 'runs'}", "trainer.max_failures=1"]}, trials=1, max_concurrent=1)
    assert cli.main(["sweep", str(path), "--tracking-uri", mlflow_uri, "--experiment", "trial-kill"]) == 0
    out = capsys.readouterr().out
    assert marker.read_text().startswith("killed rank 0 pid ")
    assert re.search(r"^trial 0: workers restarted, attempt 2 of 2: rank 0 on [\d.]+/\w+ \(its process or its node "
                     r"died\) after step 30; resumed from the checkpoint at step 20$", out, re.M), out
    (trial,) = load_study(tmp_path).trials
    assert trial.state.name == "COMPLETE"
    client = tracking.client(mlflow_uri)
    (run,) = sweep_runs(client, "trial-kill")[1]
    assert run.info.status == "FINISHED" and run.data.metrics["energy/steps_1"] == trial.values[0]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [10, 20, 30, 40], steps


def test_a_diverging_trial_fails_a_poor_one_is_pruned_and_the_sweep_goes_on(ray_local, mlflow_uri, tmp_path, capsys):
    # Enqueued in this order, one at a time: a good run, one whose loss becomes NaN (lr 1e30), and one that barely
    # learns (lr 1e-9) for long enough that the median pruner (with the good run as reference) stops it early.
    base = [o for o in TINY if not o.startswith(("train.steps", "eval.every"))] + ["eval.every=10"]
    path = write_sweep(
        tmp_path,
        base={"config": "toy2d", "overrides": [*base, f"storage.root={tmp_path / 'runs'}"]},
        space={"train.lr": {"choices": [1e-2, 1e30, 1e-9]}, "train.steps": {"choices": [40, 4000]}},
        enqueue=[{"train.lr": 1e-2, "train.steps": 40}, {"train.lr": 1e30, "train.steps": 40},
                 {"train.lr": 1e-9, "train.steps": 4000}],
        pruner={"name": "median", "startup_trials": 1, "min_resource": 10},
        trials=3,
        max_concurrent=1,
    )
    assert cli.main(["sweep", str(path), "--tracking-uri", mlflow_uri, "--experiment", "sweep-nan"]) == 0
    out = capsys.readouterr().out
    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "PRUNED"], out
    assert "train/loss became nan" in study.trials[1].user_attrs["error"]
    assert re.search(r"^trial 1 failed after \d+s: .*train/loss became nan", out, re.M)

    client = tracking.client(mlflow_uri)
    runs = {int(c.data.tags["imm.trial.number"]): c for c in sweep_runs(client, "sweep-nan")[1]}
    assert runs[0].info.status == "FINISHED"
    assert runs[1].info.status == "FAILED" and runs[1].data.tags["imm.trial.state"] == "failed"
    assert "train/loss became nan" in runs[1].data.tags["imm.trial.error"]
    # A pruned trial is not drawn like a crash (KILLED), and its name says where its metrics stop
    assert runs[2].info.status == "FINISHED" and runs[2].data.tags["imm.trial.state"] == "pruned"
    pruned_at = int(runs[2].data.tags["imm.trial.pruned_at_step"])
    assert 10 <= pruned_at < 4000
    assert runs[2].info.run_name.startswith("t2 ") and runs[2].info.run_name.endswith(f"(pruned at step {pruned_at})")
    assert max(study.trials[2].intermediate_values) == pruned_at


def test_a_pruned_trials_cpus_are_freed_when_another_ray_runs_on_the_machine(ray_local, tmp_path):
    """The session's Ray is the other instance; the sweep runs as a user's command with its own embedded Ray.

    Each trial takes both of the embedded cluster's CPUs, so the last trial can start only once the pruned
    trial's placement group is removed, which Ray Train's cleaner does through Ray's state API. With two Ray
    instances on the machine, that API cannot pick a cluster unless RAY_ADDRESS says which: without it the
    last trial waits forever.
    """
    base = [o for o in TINY if not o.startswith(("train.steps", "eval.every"))] + ["eval.every=10"]
    path = write_sweep(
        tmp_path,
        base={"config": "toy2d", "overrides": [*base, f"storage.root={tmp_path / 'runs'}"]},
        space={"train.lr": {"choices": [1e-2, 3e-3, 1e-9]}, "train.steps": {"choices": [40, 4000]}},
        enqueue=[{"train.lr": 1e-2, "train.steps": 40}, {"train.lr": 1e-9, "train.steps": 4000},
                 {"train.lr": 3e-3, "train.steps": 40}],  # distinct: Optuna skips a repeated enqueue
        pruner={"name": "median", "startup_trials": 1, "min_resource": 10},
        resources={"workers": 1, "cpus_per_worker": 2, "gpus_per_worker": 0},
        trials=3,
        max_concurrent=1,
    )
    cmd = [sys.executable, "-m", "orchestrator.cli", "sweep", str(path), "--tracking-uri",
           f"sqlite:///{tmp_path / 'mlflow.db'}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the sweep hung (the pruned trial's CPUs were never freed):\n{(e.stdout or b'')[-2000:]}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    states = [t.state.name for t in load_study(tmp_path).trials]
    assert states[:2] == ["COMPLETE", "PRUNED"], proc.stdout
    assert "trial 2 started" in proc.stdout and states[2] in ("COMPLETE", "PRUNED")  # it got the freed CPUs


def test_a_sweep_whose_first_trials_all_fail_the_same_way_stops(ray_local, mlflow_uri, tmp_path, capsys):
    """Every trial failed with the same configuration error and the command exited 0. Here each
    key is valid alone, but the U-statistic needs M >= 2: every trial fails before it starts."""
    path = write_sweep(tmp_path, space={"imm.estimator": {"choices": ["u"]}, "imm.group_size": {"choices": [1]},
                                        "imm.k": {"low": 8, "high": 12}}, trials=8)
    assert cli.main(["sweep", str(path), "--tracking-uri", mlflow_uri, "--experiment", "fail-fast"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("imm-orch: sweep stopped: its first 3 trials all failed with: imm.estimator: 'u' needs"), err
    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3  # the other 5 were never started
    (parent,), children = sweep_runs(tracking.client(mlflow_uri), "fail-fast")
    assert parent.info.status == "FAILED" and "its first 3 trials all failed" in parent.data.tags["imm.sweep.error"]


def test_one_driver_per_sweep_and_a_dead_drivers_lease_is_taken_over(ray_local, mlflow_uri, tmp_path, monkeypatch, capsys):
    """A second `--resume` beside a live driver took its RUNNING trials for crashed ones and trained
    them twice into the same runs. Now it is refused in one line; once the first driver is SIGKILLed, `--resume`
    on the same machine sees its process gone and takes over at once, long before the lease would expire (CI: a
    `ray job stop` that SIGKILLed a slow driver left its lease, and the resubmitted job was refused)."""
    import ray

    monkeypatch.setenv("IMM_SWEEP_LEASE_S", "600")
    path = write_sweep(tmp_path, max_concurrent=1, trials=3)
    argv = ["sweep", str(path), "--tracking-uri", mlflow_uri, "--experiment", "lease"]
    log = tmp_path / "first.log"
    with log.open("w") as f:
        first = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *argv, "--address",
                                  ray.get_runtime_context().gcs_address], stdout=f, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 300
        while "trial 0 step 20/40" not in log.read_text():  # under way, its trial 0 RUNNING
            assert time.monotonic() < deadline and first.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        t0 = time.perf_counter()
        assert cli.main([*argv, "--resume"]) == 2
        err = capsys.readouterr().err
        assert re.match(rf"imm-orch: error: --resume: sweep 'it' is being run by pid {first.pid} on \S+ \(its lease", err)
        assert err.count("\n") == 1 and time.perf_counter() - t0 < 10
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert cli.main([*argv, "--resume"]) == 0
    assert [t.state.name for t in load_study(tmp_path).trials] == ["COMPLETE"] * 3
    _, children = sweep_runs(tracking.client(mlflow_uri), "lease")
    for c in children:
        steps = [m.step for m in tracking.client(mlflow_uri).get_metric_history(c.info.run_id, "train/loss")]
        assert steps == sorted(set(steps)) == [10, 20, 30, 40], steps


def test_the_terminal_shows_progress_and_results_and_the_log_file_rays_own_lines(mlflow_uri, tmp_path):
    """Between the progress lines, `make demo` printed Ray's own errors and warnings (core_worker.cc,
    placement_group_cleaner, the raylet, token authentication) that a new user reads as failures. `imm-orch` (the
    console script) keeps them in a log file under the storage root and prints its path once."""
    from tests.servers import BIN

    path = write_sweep(tmp_path, trials=2, space={"imm.group_size": {"choices": [4, 8]}}, sampler={"name": "grid"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
    proc = subprocess.run([str(BIN / "imm-orch"), "sweep", str(path), "--tracking-uri", mlflow_uri, "--experiment",
                           "quiet"], capture_output=True, text=True, env=env, timeout=600)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 0, shown[-3000:]
    log = Path(re.search(r"^log: (\S+) \(Ray's and MLflow's own messages", proc.stdout, re.M).group(1))
    assert log.parent == tmp_path / "runs" / "logs"
    for line in ("trial 0 started: imm.group_size=", "trial 1 complete in ", "sweep done in ", "best: trial "):
        assert line in proc.stdout, shown[-3000:]
    markers = ("core_worker.cc", "placement_group_cleaner", "raylet", "authentication_token", "Traceback", "WARNING",
               " INFO ", "alembic")
    noise = [ln for ln in shown.splitlines() if any(m in ln for m in markers)]
    assert not noise, noise[:5]
    held = log.read_text()
    assert any(m in held for m in markers), held[-2000:]  # Ray's own lines went there
