"""`imm-orch sweep` and `imm-orch status` without a cluster: help, --dry-run, mistakes named before Ray starts,
the status table of a stored study, and the pieces the runner is built from (concurrency, errors, redaction)."""

from __future__ import annotations

import re

import optuna
import pytest
import yaml

from orchestrator import cli
from orchestrator.sweep.spec import sweep_from_dict
from orchestrator.sweep.study import ask_distinct, check_study, open_study, redact
from orchestrator.sweep.trials import concurrency
from orchestrator.terminal import root_cause

TINY = ["model.hidden=32", "model.depth=1", "train.steps=40", "train.batch_size=64", "eval.every=20"]


def spec(tmp_path, **changes):
    s = {
        "name": "cli",
        "base": {"config": "toy2d", "overrides": [*TINY, f"storage.root={tmp_path / 'runs'}"]},
        "space": {"imm.group_size": {"choices": [4, 8]}, "train.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        "objective": "energy/steps_1",
        "trials": 3,
    }
    s.update(changes)
    return s


def write(tmp_path, **changes):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path, **changes)))
    return path


def test_help_shows_examples(capsys):
    for command in ("sweep", "status"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"imm-orch {command} " in out


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, capsys, no_ray):
    path = write(tmp_path)
    assert cli.main(["sweep", str(path), "--dry-run", "train.steps=7"]) == 0
    out = capsys.readouterr().out
    assert "sweep 'cli': 3 trials, sampler tpe, pruner none" in out
    assert "imm.group_size: one of [4, 8]" in out and "train.lr: float in [0.0001, 0.01] log" in out
    assert f"study storage: journal:{tmp_path / 'runs' / 'optuna.journal'}" in out
    assert "steps: 7" in out  # command-line overrides reach the base run config
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "changes, args, message",
    [
        ({"space": {"imm.kernl": {"choices": ["rbf"]}}}, [], "space.imm.kernl: 'imm.kernl' is not a run-config key"),
        ({}, ["imm.bogus=1"], "base: imm.bogus"),
        ({}, ["--trials", "0"], "--trials: 0 is out of range"),
        ({}, ["--resume"], "--resume: no sweep 'cli' in journal:"),
        ({"storage": "redis://host"}, [], "storage: 'redis://host' is not a study storage"),
    ],
)
def test_mistakes_fail_before_ray_with_one_line(tmp_path, capsys, no_ray, changes, args, message):
    path = write(tmp_path, **changes)
    assert cli.main(["sweep", str(path), *args]) == 2
    err = capsys.readouterr().err
    # (lines a shared test Ray forwards from its workers, prefixed "(Actor pid=...)", are not the command's)
    ours = [ln for ln in err.splitlines() if ln.strip() and "pid=" not in ln]
    assert len(ours) == 1 and ours[0].startswith("imm-orch: error: ") and message in ours[0], ours
    assert "Traceback" not in err


def test_an_existing_sweep_needs_resume_and_the_same_objective(tmp_path, capsys, no_ray):
    sweep = sweep_from_dict(spec(tmp_path))
    study = open_study(sweep, resume=False)
    study.tell(study.ask(), 1.0)
    assert cli.main(["sweep", str(write(tmp_path))]) == 2
    assert "a sweep 'cli' with 1 trial(s) exists" in capsys.readouterr().err
    other = sweep_from_dict(spec(tmp_path, objective={"metric": "energy/steps_2", "direction": "maximize"}))
    with pytest.raises(ValueError, match="a resumed sweep keeps its objective"):
        check_study(other, resume=True)
    assert check_study(sweep, resume=True).study_name == "cli"


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_sweep_draws_new_parameters_instead_of_replaying_the_first(tmp_path, sampler):
    """Each --resume rebuilt the sampler with the same seed, so its first trial repeated trial 0."""
    sweep = sweep_from_dict(spec(tmp_path, sampler={"name": sampler, "seed": 0}))
    seen = []
    for _ in range(3):  # a fresh sweep, then two resumes, each running two trials
        study = open_study(sweep, resume=bool(seen))
        for _ in range(2):
            trial, params = ask_distinct(study, sweep)
            seen.append(params)
            study.tell(trial, 1.0)
    lrs = [p["train.lr"] for p in seen]
    assert len(set(lrs)) == len(lrs), lrs


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "grid"])
def test_no_parameter_set_runs_twice_and_a_used_up_space_ends_the_sweep(tmp_path, sampler):
    """TPE repeats configurations on discrete spaces (M, kernel, k). Here M x weighting x k, with b
    where weighting=sigmoid: 12 sets (16 for a grid, which has no conditions). Each runs once, across two resumes,
    whatever the sampler proposes; one more ask finds the space used up. The enqueued trial runs first, as given."""
    space = {"imm.group_size": {"choices": [4, 8]}, "imm.weighting": {"choices": ["sigmoid", "constant"]},
             "imm.b": {"choices": [2.0, 5.0], "when": {"imm.weighting": "sigmoid"}},
             "imm.k": {"low": 10, "high": 11}}
    if sampler == "grid":
        space["imm.b"].pop("when")
    first = {"imm.group_size": 8, "imm.weighting": "sigmoid", "imm.b": 5.0, "imm.k": 10}
    sweep = sweep_from_dict(spec(tmp_path, space=space, sampler={"name": sampler, "seed": 1, "startup_trials": 2},
                                 enqueue=[first]))
    points = sweep.points()
    assert len(points) == (16 if sampler == "grid" else 12)
    seen = []
    for _ in range(3):  # a fresh sweep and two resumes
        study = open_study(sweep, resume=bool(seen))
        for _ in range(6):
            asked = ask_distinct(study, sweep)
            if asked is None:
                break
            trial, params = asked
            seen.append(params)
            study.tell(trial, float(params["imm.k"]) + params["imm.group_size"] / 10)  # low k, low M look best
    assert seen[0] == first
    assert len(seen) == len(points) and sorted(map(str, seen)) == sorted(map(str, points))
    assert len(study.trials) == len(points)  # nothing asked and thrown away
    assert ask_distinct(open_study(sweep, resume=True), sweep) is None


def test_a_proposal_copies_into_the_mirror_only_the_trials_that_changed(tmp_path, monkeypatch):
    """Each ask once copied the whole history into a throwaway study (O(trials) an ask, O(trials^2) a sweep). The
    mirror is kept in step instead: an ask adds the trials that started or finished since the last, and the mirror's
    running trials are the study's."""
    from orchestrator.sweep import study as study_module

    sweep = sweep_from_dict(spec(tmp_path, trials=40, sampler={"name": "tpe", "seed": 0, "startup_trials": 5}))
    study = optuna.create_study(directions=sweep.directions, sampler=study_module.optuna_sampler(sweep))
    for i in range(20):
        trial, _ = ask_distinct(study, sweep)
        study.tell(trial, float(i % 7))
    added = []
    real_add = optuna.Study.add_trial
    def add_trial(self, t):  # the mirror's (the study's own enqueue_trial adds a waiting trial too)
        if self is not study:
            added.append(t.number)
        return real_add(self, t)

    monkeypatch.setattr(optuna.Study, "add_trial", add_trial)
    first, _ = ask_distinct(study, sweep)
    assert added == [19]  # the one trial told since the last ask
    second, _ = ask_distinct(study, sweep)
    assert added == [19]  # nothing finished since: nothing copied (the first runs in the mirror as proposed)
    study.tell(first, 0.5)
    study.tell(second, 0.25)
    ask_distinct(study, sweep)
    assert added == [19, first.number, second.number]
    mirror = study_module.PROPOSERS[study].mirror
    running = [t.params for t in mirror.get_trials(states=[optuna.trial.TrialState.RUNNING])]
    assert running == [t.params for t in study.get_trials(states=[optuna.trial.TrialState.RUNNING])]
    assert len(study.trials) == 23  # nothing asked and thrown away in the study itself


def test_past_its_limit_the_mirror_models_the_best_and_the_most_recent_trials(tmp_path, monkeypatch):
    """TPE's cost per proposal grows with the trials it models, so past MODELLED finished trials the mirror is built
    again from the best tenth and the most recent rest, with the running ones; no parameter set repeats."""
    from orchestrator.sweep import study as study_module

    monkeypatch.setattr(study_module, "MODELLED", 20)
    sweep = sweep_from_dict(spec(tmp_path, trials=200, sampler={"name": "tpe", "seed": 0, "startup_trials": 5}))
    study = optuna.create_study(directions=sweep.directions, sampler=study_module.optuna_sampler(sweep))
    held, keys = None, []
    for i in range(120):
        trial, params = ask_distinct(study, sweep)
        keys.append(study_module.point_key(params))
        if i == 3:
            held = trial  # it stays running
            continue
        study.tell(trial, 1.0 + (i % 10) if i != 7 else 0.01)  # trial 7 is the best by far
    assert len(set(keys)) == len(keys)
    proposer = study_module.PROPOSERS[study]
    assert proposer.size <= 2 * 20 + study_module.PROPOSALS
    mirror = proposer.mirror.get_trials(deepcopy=False)
    finished = [t for t in mirror if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]
    assert len(finished) <= 20 + 40 and min(t.values[0] for t in finished) == 0.01  # the best stays modelled
    running = [t.params for t in mirror if t.state == optuna.trial.TrialState.RUNNING]
    assert held.params in running
    assert len(study.trials) == 120


def test_status_prints_trials_and_the_best(tmp_path, capsys):
    sweep = sweep_from_dict(spec(tmp_path))
    study = open_study(sweep, resume=False)
    for value in (0.5, 0.2):
        t = study.ask()
        sweep.suggest(t)
        t.set_user_attr("mlflow_run_id", f"run{value}")
        study.tell(t, value)
    t = study.ask()
    sweep.suggest(t)
    t.set_user_attr("error", "FloatingPointError: train/loss became nan by step 10")
    study.tell(t, state=optuna.trial.TrialState.FAIL)
    path = write(tmp_path)
    assert cli.main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sweep 'cli' (journal:" in out and "3 trial(s): 2 complete, 1 fail" in out
    assert "#  state     energy/steps_1  imm.group_size  train.lr" in out
    assert "trial 2 error: FloatingPointError: train/loss became nan by step 10" in out
    assert "best: trial 1  energy/steps_1=0.2" in out and "(mlflow run run0.2)" in out
    journal = tmp_path / "runs" / "optuna.journal"
    assert cli.main(["status", "cli", "--storage", f"journal:{journal}"]) == 0
    capsys.readouterr()
    assert cli.main(["status", "nope", "--storage", f"journal:{journal}"]) == 2
    err = capsys.readouterr().err
    assert "no sweep 'nope'" in err and "(sweeps there: ['cli'])" in err
    assert cli.main(["status", "cli", "--storage", f"journal:{tmp_path / 'missing.journal'}"]) == 2
    assert "no study storage at" in capsys.readouterr().err


def test_concurrency_is_capped_by_the_cluster_and_refused_when_a_trial_cannot_fit(tmp_path):
    sweep = sweep_from_dict(spec(tmp_path, max_concurrent=4, resources={"workers": 2}))
    assert concurrency(sweep, {"CPU": 5.0}, trials_left=10)[0] == 2  # 2 CPUs per trial
    assert concurrency(sweep, {"CPU": 64.0}, trials_left=10)[0] == 4  # max_concurrent
    assert concurrency(sweep, {"CPU": 64.0}, trials_left=1)[0] == 1
    gpu = sweep_from_dict(spec(tmp_path, resources={"workers": 1, "gpus_per_worker": 0.5}))
    assert concurrency(gpu, {"CPU": 16.0, "GPU": 1.0}, trials_left=10)[0] == 2  # two trials share a GPU
    with pytest.raises(ValueError, match="resources: one trial needs 1 CPU, 0.5 GPU, the cluster has 16 CPU, 0 GPU"):
        concurrency(gpu, {"CPU": 16.0}, trials_left=10)


def test_root_cause_and_redaction():
    wrapped = ("ray.exceptions.RayTaskError(TrainingFailedError): ray::run_trial()\n  File x\n"
               "ray.train.TrainingFailedError: Training failed due to worker errors:\n"
               "[Rank 0]\nTraceback (most recent call last):\n  File y\n"
               "FloatingPointError: train/loss became nan by step 10; lower train.lr or check the data\n")
    assert root_cause(RuntimeError(wrapped)) == \
        "FloatingPointError: train/loss became nan by step 10; lower train.lr or check the data"
    assert root_cause(RuntimeError("plain words")) == "plain words"
    assert redact("postgresql://optuna:s3cret@db:5432/optuna") == "postgresql://optuna:***@db:5432/optuna"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_best_of_trains_the_best_complete_trials_settings_again(tmp_path, capsys, no_ray):
    """`imm-orch train --best-of SWEEP.yaml train.steps=N`: the sweep's base config, its best complete trial's
    swept values, then the command's overrides; refused in one line when there is no such trial."""
    path = write(tmp_path)
    argv = ["train", "--best-of", str(path), "train.steps=77", "--dry-run"]
    assert cli.main(argv) == 2
    assert "--best-of: no sweep 'cli' in journal:" in capsys.readouterr().err
    sweep = sweep_from_dict(spec(tmp_path))
    study = open_study(sweep, resume=False)
    for group_size, lr, value in ((4, 1e-3, 0.5), (8, 2e-3, 0.25), (4, 5e-3, None)):  # the last one pruned
        study.enqueue_trial({"imm.group_size": group_size, "train.lr": lr})
        trial, _ = ask_distinct(study, sweep)
        study.tell(trial, value, state=None if value is not None else optuna.trial.TrialState.PRUNED)
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "group_size: 8" in out and "lr: 0.002" in out and "steps: 77" in out  # the best trial, 77 steps
    assert re.search(r"^run name: +cli-\w+-best$", out, re.M)
    assert cli.main(["train", "toy2d", "--best-of", str(path)]) == 2
    assert "--best-of: the config comes from the sweep; drop 'toy2d'" in capsys.readouterr().err


def test_a_study_in_postgresql_and_the_driver_it_needs(tmp_path, capsys, no_ray, postgres, monkeypatch):
    """A study in a real PostgreSQL server, as the cluster instructions say; without the driver
    (`imm-orch[postgres]`), `imm-orch sweep` stopped with 'unexpected error: ImportError: Failed to import DB
    access module'. Now one line names the extra, before Ray starts."""
    import sys

    url = postgres.database()
    monkeypatch.setenv("IMM_OPTUNA_STORAGE", url)
    sweep = sweep_from_dict(spec(tmp_path))
    study = open_study(sweep, resume=False)
    trial = study.ask()
    sweep.suggest(trial)
    study.tell(trial, 0.25)
    assert cli.main(["status", "cli", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "sweep 'cli' (postgresql://imm:***@127.0.0.1:" in out and "1 trial(s): 1 complete" in out
    assert postgres.password not in out

    monkeypatch.setitem(sys.modules, "psycopg", None)  # a laptop without the extra
    assert cli.main(["sweep", str(write(tmp_path)), "--resume"]) == 2
    ours = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "pid=" not in ln]
    assert ours == [f"imm-orch: error: storage: {redact(url)} needs the database driver psycopg, which is not "
                    "installed: pip install -e '.[postgres]' in this checkout (the cluster image has it)"]


def test_a_sweep_is_resumed_only_where_its_mlflow_record_is(tmp_path, capsys, no_ray):
    """A sweep resumed against another tracking store went on in an empty record (a new parent run,
    trials' runs without their history). Refused before Ray starts, naming the store that holds it."""
    from orchestrator.sweep.records import SweepRecords
    from orchestrator.sweep.study import storage_url

    sweep = sweep_from_dict(spec(tmp_path))
    first = f"sqlite:///{tmp_path / 'first.db'}"
    study = open_study(sweep, resume=False)
    records = SweepRecords(sweep, study, tracking_uri=first, experiment="sweeps", trials=3,
                           storage_url=storage_url(sweep))
    trial = study.ask()
    sweep.suggest(trial)
    study.tell(trial, 0.5)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert cli.main(["sweep", str(write(tmp_path)), "--resume", "--tracking-uri", other]) == 2
    ours = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "pid=" not in ln]
    assert ours == [f"imm-orch: error: --tracking-uri: sweep 'cli' is recorded in MLflow run {records.parent_id} at "
                    f"{first}, which {other} does not hold; resume it with --tracking-uri {first}, or start a new "
                    "sweep under another name"]
    from orchestrator.track import run_record

    run_record.check_sweep_continuation(study, first)  # its own store: resumed
