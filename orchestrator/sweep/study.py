"""A sweep's Optuna study: where it is stored, its sampler and pruner, proposals that never repeat a trial, and
the checks that a stored study agrees with the sweep about to run (made before Ray starts)."""

from __future__ import annotations

import os
import random
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

from imm.config import ConfigError
from orchestrator.sweep.lease import refuse_if_held
from orchestrator.sweep.space import Sweep

JOURNAL_FILE = "optuna.journal"
RDB_SCHEMES = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")
# The extra (pyproject.toml) that installs a database driver: psycopg (3), which SQLAlchemy >= 2.1 picks for
# `postgresql://` URLs (2.0 picked psycopg2)
DRIVER_EXTRAS = {"psycopg": "postgres"}  # the extra of this project that installs it


def study_setting(sweep: Sweep) -> str:
    """The study's storage as configured, paths unresolved: the file's `storage`, else $IMM_OPTUNA_STORAGE (a
    cluster's RDB), else `journal:<storage.root>/optuna.journal`."""
    return sweep.spec.storage or os.environ.get("IMM_OPTUNA_STORAGE") or \
        f"journal:{sweep.base.storage.root.rstrip('/')}/{JOURNAL_FILE}"


def storage_url(sweep: Sweep) -> str:
    """The study's storage as a URL: `journal:ABSOLUTE_PATH` or an RDB URL (see `study_setting`)."""
    url = study_setting(sweep)
    if url.startswith("journal:"):
        return f"journal:{Path(url[len('journal:'):]).expanduser().resolve()}"
    if url.startswith(RDB_SCHEMES):
        return url
    raise ConfigError(f"storage: {url!r} is not a study storage; use journal:PATH (a file, safe for concurrent "
                      "writers) or an RDB URL such as postgresql://user@host/db (or null for the default)")


def redact(url: str) -> str:
    """The URL without its password, for printing and tags."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def check_driver(url: str) -> None:
    """A one-line ConfigError unless the database driver of the RDB URL `url` imports (SQLAlchemy's own choice of
    driver: `postgresql://` means psycopg), naming what installs it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError) as e:
        raise ConfigError(f"storage: {redact(url)} is not a database URL SQLAlchemy knows ({e})") from None
    except ImportError as e:
        driver = getattr(e, "name", None) or str(e)
        extra = DRIVER_EXTRAS.get(driver)
        how = (f"pip install -e '.[{extra}]' in this checkout (the cluster image has it)" if extra
               else f"install the Python module {driver}")
        raise ConfigError(f"storage: {redact(url)} needs the database driver {driver}, which is not installed: "
                          f"{how}") from None


def open_storage(url: str):
    import optuna

    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    check_driver(url)
    return optuna.storages.RDBStorage(url)


def optuna_sampler(sweep: Sweep, draw: int = 0):
    """The sweep's sampler for its `draw`-th proposal: a seed of its own per proposal, so that a resumed sweep (whose
    sampler is built again) or a proposal tried again does not replay earlier draws."""
    import optuna

    s = sweep.spec.sampler
    seed = None if s.seed is None else s.seed + draw
    startup = {} if s.startup_trials is None else {"n_startup_trials": s.startup_trials}
    if s.name == "tpe":
        # multivariate + group model the conditional keys jointly; the constant liar keeps concurrent trials apart.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True, **startup)
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, **startup)
    if s.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **startup)
    if s.name == "grid":
        return _AskTellGridSampler({p.key: p.grid() for p in sweep.params}, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


PROPOSALS = 16  # the sampler's tries at a parameter set not run yet, before one is drawn from those left


def ask_distinct(study, sweep: Sweep):
    """(trial, params) of a new trial whose parameter set no earlier trial of the study has, or None when a finite
    space is used up. Trials the sweep enqueued come first, as they are.

    Optuna has no such option, and a trial once asked stays in the study, so the sampler proposes in a throwaway
    in-memory copy of the study (a new seed per proposal); the first new set is enqueued and asked in the study.
    To run a configuration several times, sweep `train.seed`."""
    import optuna

    TS = optuna.trial.TrialState
    if study.get_trials(deepcopy=False, states=[TS.WAITING]):
        trial = study.ask()
        return trial, sweep.suggest(trial)
    history = study.get_trials(deepcopy=False, states=[TS.COMPLETE, TS.PRUNED, TS.FAIL, TS.RUNNING])
    seen = {_point_key(t.params) for t in history}
    params = None
    if sweep.spec.sampler.name != "grid":  # a grid sampler marks its own points only, not enqueued ones
        for attempt in range(PROPOSALS):
            sampler = optuna_sampler(sweep, len(history) * PROPOSALS + attempt)
            shadow = optuna.create_study(directions=study.directions, sampler=sampler)
            shadow.add_trials(history)
            proposal = sweep.suggest(shadow.ask())
            if _point_key(proposal) not in seen:
                params = proposal
                break
    if params is None:  # the sampler keeps coming back to what ran (or a grid): draw from the points left
        points = sweep.points()
        left = [p for p in points or [] if _point_key(p) not in seen]
        if points is not None and not left:
            return None
        seed = sweep.spec.sampler.seed
        params = random.Random(None if seed is None else f"{seed}/{len(history)}").choice(left) if left else proposal
    study.enqueue_trial(params)
    trial = study.ask()
    return trial, sweep.suggest(trial)


def _point_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in params.items()))


def _AskTellGridSampler(*args, **kwargs):
    """Optuna's grid sampler calls `study.stop()` after the last point, which raises outside `optimize`; the runner
    caps a grid sweep's trials at the grid size instead, so nothing needs stopping."""
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            pass

    return AskTellGridSampler(*args, **kwargs)


def make_pruner(sweep: Sweep):
    """The pruner over training steps: the first decision after `min_resource` steps (default eval.every)."""
    import optuna

    pr = sweep.spec.pruner
    min_resource = pr.min_resource or int(sweep.base.eval.every)
    if pr.name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=pr.reduction_factor)
    if pr.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=int(sweep.base.train.steps),
                                              reduction_factor=pr.reduction_factor)
    if pr.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pr.startup_trials, n_warmup_steps=min_resource - 1)
    return optuna.pruners.NopPruner()


def check_study(sweep: Sweep, *, resume: bool, store=None):
    """The stored study, if any, after checking it agrees with `resume` and the objective (before Ray starts)."""
    import optuna

    url = storage_url(sweep)
    store = store or open_storage(url)
    name = sweep.name
    try:
        existing = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        existing = None
    if existing is not None and existing.trials and not resume:
        raise ConfigError(f"name: a sweep {name!r} with {len(existing.trials)} trial(s) exists in {redact(url)}; "
                          "pass --resume to continue it, or give this sweep another name")
    if existing is None and resume:
        raise ConfigError(f"--resume: no sweep {name!r} in {redact(url)} to resume (run it without --resume)")
    if existing is not None:
        refuse_if_held(existing, name)
        stored = (existing.user_attrs.get("metrics", sweep.metrics), [d.name.lower() for d in existing.directions])
        if stored != (sweep.metrics, sweep.directions):
            raise ConfigError(f"objective: the stored study has {stored[0]} {stored[1]}, this file {sweep.metrics} "
                              f"{sweep.directions}; a resumed sweep keeps its objective")
    return existing


def open_study(sweep: Sweep, *, resume: bool):
    """The sweep's study: new (enqueued trials added), or, with `resume`, the existing one and its history."""
    import optuna

    store = open_storage(storage_url(sweep))
    check_study(sweep, resume=resume, store=store)
    sampler = optuna_sampler(sweep)  # it sees enqueued trials only: ask_distinct proposes the others
    study = optuna.create_study(study_name=sweep.name, storage=store, sampler=sampler, pruner=make_pruner(sweep),
                                directions=sweep.directions, load_if_exists=True)
    if "sweep_id" not in study.user_attrs:
        study.set_user_attr("sweep_id", uuid.uuid4().hex[:6])
        study.set_user_attr("metrics", sweep.metrics)
        study.set_user_attr("space", {p.key: p.describe() for p in sweep.params})
        for entry in sweep.spec.enqueue:
            study.enqueue_trial(dict(entry), skip_if_exists=True)
    return study


def trial_counts(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def best_trials(study) -> list[dict]:
    """The best trial (one objective) or the Pareto front, as plain dicts."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    if not complete:
        return []
    trials = study.best_trials if len(study.directions) > 1 else [study.best_trial]
    return [{"number": t.number, "values": list(t.values), "params": dict(t.params),
             "run_id": t.user_attrs.get("mlflow_run_id")} for t in trials]


def finished_trials(study) -> list:
    """The study's complete, pruned and failed trials."""
    import optuna

    TS = optuna.trial.TrialState
    return study.get_trials(deepcopy=False, states=(TS.COMPLETE, TS.PRUNED, TS.FAIL))
