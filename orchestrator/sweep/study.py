"""A sweep's Optuna study: where it is stored, its sampler and pruner, proposals that never repeat a trial, and
the checks that a stored study agrees with the sweep about to run (made before Ray starts)."""

from __future__ import annotations

import os
import random
import re
import uuid
import warnings
import weakref
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
# TPE's cost per proposal grows with the trials it models (on this 2-core machine about 13 ms at 500 trials, 25 ms
# at 1,000-2,000). Past MODELLED finished trials the mirror models the best tenth of them and the most recent rest:
# TPE's good group is at most its best 25 trials, and it weighs older trials of the other group less and less.
# It is built again each time it has grown by a fifth (a rebuild costs about as much as one proposal), so the
# trials modelled, and a proposal's cost, stay within a fifth of the cap. Its size counts its entries: a trial
# run from it is two (its running copy, failed once it ends, and its finished copy), so the first rebuild comes at
# about MODELLED / 2 + MODELLED / 10 finished trials.
MODELLED = 500


class Proposer:
    """The sampler's proposals for one study, made in an in-memory mirror of it that is kept in step trial by trial:
    a proposal costs the sampler's own work, not a copy of the whole history (which made each ask O(trials) and a
    sweep O(trials^2)). The mirror holds the study's trials (a running one, then its finished copy: the running copy
    is marked failed, which samplers leave out) and the rejected proposals, failed too; past `MODELLED` finished
    trials it is built again from the best and the most recent of them. `seen` holds every parameter set the
    study has run, read once per trial."""

    def __init__(self, study, sweep: Sweep, draws: int):
        import optuna

        self.study, self.sweep = study, sweep
        # a seed of its own per driver: a resumed sweep does not replay the draws its first driver made
        self.mirror = optuna.create_study(directions=study.directions, sampler=optuna_sampler(sweep, draws))
        self.copies: dict[int, tuple[int | None, Any]] = {}  # trial number -> (its copy's number or None, its state)
        self.size = 0  # trials in the mirror (`mirror.trials` would copy them all)
        self.seen: set[tuple] = set()
        self.settled = 0  # every trial numbered below this has finished and is synced
        self.rebuilt = MODELLED  # the mirror's size after its last rebuild (the running trials' copies included)
        self.waiting = False  # the study holds an enqueued trial not asked yet (seen by the last sync)

    def sync(self) -> None:
        """Copy what changed in the study since the last call: new trials, and running ones that have finished."""
        import optuna

        TS = optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)  # ordered by number
        self.waiting = False
        for t in trials[self.settled:]:
            known = self.copies.get(t.number)
            self.waiting |= t.state == TS.WAITING
            if t.state == TS.WAITING or known is not None and (known[1] == t.state or t.state == TS.RUNNING):
                continue
            if known is None:
                self.seen.add(point_key(t.params))
            elif known[0] is not None:  # finished since: its running copy leaves the model, its finished copy enters
                self.mirror.tell(known[0], state=TS.FAIL)
            self.mirror.add_trial(t)
            self.copies[t.number], self.size = (self.size, t.state), self.size + 1
        while self.settled < len(trials) and trials[self.settled].state.is_finished() and \
                self.settled in self.copies:
            self.settled += 1
        if self.size > self.rebuilt + MODELLED // 5 + PROPOSALS:
            self._rebuild(trials)
            self.rebuilt = max(MODELLED, self.size)

    def _rebuild(self, trials) -> None:
        """A new mirror of the running trials, the best tenth of `MODELLED` finished ones (by the first objective)
        and the most recent others up to `MODELLED`."""
        import optuna

        TS = optuna.trial.TrialState
        finished = [t for t in trials if t.state.is_finished()]
        complete = [t for t in finished if t.state == TS.COMPLETE and t.values]
        sign = 1 if self.study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1
        best = sorted(complete, key=lambda t: sign * t.values[0])[:MODELLED // 10]
        kept = {t.number for t in best}
        recent = [t for t in reversed(finished) if t.number not in kept][:MODELLED - len(best)]
        running = [t for t in trials if t.state == TS.RUNNING]
        self.mirror = optuna.create_study(directions=self.study.directions, sampler=self.mirror.sampler)
        self.copies = {t.number: (None, t.state) for t in trials if t.state != TS.WAITING}
        self.size = 0
        for t in sorted([*best, *recent, *running], key=lambda t: t.number):
            self.mirror.add_trial(t)
            self.copies[t.number], self.size = (self.size, t.state), self.size + 1

    def propose(self) -> tuple[dict | None, dict | None, Any]:
        """(a new parameter set or None, the last proposal, the mirror's trial of the new set)."""
        import optuna

        proposal = None
        for _ in range(PROPOSALS):
            trial = self.mirror.ask()
            self.size += 1
            proposal = self.sweep.suggest(trial)
            if point_key(proposal) not in self.seen:
                return proposal, proposal, trial
            self.mirror.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None, proposal, None


PROPOSERS = weakref.WeakKeyDictionary()  # study -> its Proposer, for as long as the driver holds the study


def ask_distinct(study, sweep: Sweep):
    """(trial, params) of a new trial whose parameter set no earlier trial of the study has, or None when a finite
    space is used up. Trials the sweep enqueued come first, as they are.

    Optuna has no such option, and a trial once asked stays in the study, so the sampler proposes in an in-memory
    mirror of the study (`Proposer`); the first new set is enqueued and asked in the study. To run a configuration
    several times, sweep `train.seed`."""
    import optuna

    TS = optuna.trial.TrialState
    proposer = PROPOSERS.get(study)
    if proposer is None:
        asked = len(study.get_trials(deepcopy=False))
        proposer = PROPOSERS[study] = Proposer(study, sweep, asked * PROPOSALS)
    proposer.sync()
    if proposer.waiting:
        trial = study.ask()
        return trial, sweep.suggest(trial)
    params = proposal = copy = None
    if sweep.spec.sampler.name != "grid":  # a grid sampler marks its own points only, not enqueued ones
        params, proposal, copy = proposer.propose()
    if params is None:  # the sampler keeps coming back to what ran (or a grid): draw from the points left
        points = sweep.points()
        left = [p for p in points or [] if point_key(p) not in proposer.seen]
        if points is not None and not left:
            return None
        seed = sweep.spec.sampler.seed
        params = random.Random(None if seed is None else f"{seed}/{len(proposer.copies)}").choice(left) \
            if left else proposal
    if copy is not None:
        trial = start_trial(study, params, copy.distributions)
    else:
        study.enqueue_trial(params)
        trial = study.ask()
    proposer.seen.add(point_key(params))
    if copy is not None:  # the mirror's running copy of this trial is the one it proposed
        proposer.copies[trial.number] = (copy.number, TS.RUNNING)
    return trial, sweep.suggest(trial)


def start_trial(study, params: dict[str, Any], distributions: dict):
    """A RUNNING trial of the study with these params, made in one write: Optuna's enqueue_trial and ask take a
    write each, a read of every unfinished trial (RDB storages read those from the database every time: hundreds
    at 256 running trials) and a write per param."""
    import optuna

    frozen = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, params=params,
                                       distributions=distributions, system_attrs={"fixed_params": params})
    return optuna.trial.Trial(study, study._storage.create_new_trial(study._study_id, template_trial=frozen))


def point_key(params: dict[str, Any]) -> tuple:
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
    # Every trial's params are fixed when it is made (proposed in the mirror, or enqueued), so the study's own
    # sampler only fills keys an enqueued entry leaves out. A model-based one would read the whole study for each
    # new trial anyway (Optuna's Trial infers the relative search space from every trial): 10 ms a trial at 10,000.
    sampler = optuna_sampler(sweep) if sweep.spec.sampler.name == "grid" else \
        optuna.samplers.RandomSampler(seed=sweep.spec.sampler.seed)
    study = optuna.create_study(study_name=sweep.name, storage=store, sampler=sampler, pruner=make_pruner(sweep),
                                directions=sweep.directions, load_if_exists=True)
    if "sweep_id" not in study.user_attrs:
        study.set_user_attr("sweep_id", uuid.uuid4().hex[:6])
        study.set_user_attr("metrics", sweep.metrics)
        study.set_user_attr("space", {p.key: p.describe() for p in sweep.params})
        for entry in sweep.spec.enqueue:
            study.enqueue_trial(dict(entry), skip_if_exists=True)
    return study


class Tally:
    """The finished trials' counts by state, the best trial (one objective) and whether every finished trial
    failed, read from the study once and then kept by the driver as its trials end: an event costs O(1), not a
    read of every trial."""

    def __init__(self, study):
        import optuna

        self.minimize = study.directions[0] == optuna.study.StudyDirection.MINIMIZE
        self.one_objective = len(study.directions) == 1
        self.counts: dict[str, int] = {}
        self.best: tuple[int, float] | None = None  # (trial number, value)
        for t in finished_trials(study):
            self.add(t.number, t.state, t.values)

    def add(self, number: int, state, values=None) -> bool:
        """Count a finished trial; True if it is the best so far (one objective)."""
        name = state.name.lower()
        self.counts[name] = self.counts.get(name, 0) + 1
        if name != "complete" or not self.one_objective or not values:
            return False
        v = values[0]
        if self.best is not None and (v >= self.best[1] if self.minimize else v <= self.best[1]):
            return False
        self.best = (number, v)
        return True

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    @property
    def all_failed(self) -> bool:
        return self.finished > 0 and self.counts.get("fail", 0) == self.finished


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
