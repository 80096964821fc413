"""A sweep: an Optuna study whose trials are Ray Train runs, tracked as nested MLflow runs.

The driver asks the study for a trial, merges its params into the base run config and submits a Ray task
that fits the trial's own `TorchTrainer` (as Tune's function trainable would); rank 0 of each trial pushes
its reports to a board the driver drains, so intermediate metrics feed an Optuna pruner (ASHA, Hyperband,
median), and a pruned trial's task is cancelled. At most `max_concurrent` trials run, fewer if the cluster
cannot hold them.

Why not `Tuner` + `OptunaSearch`: that keeps the sweep's state twice (Tune's experiment snapshot and the
Optuna study), and after the driver is SIGKILLed the two can disagree: Tune snapshots periodically, so a
trial that finished after the last snapshot would run again. Here the study, in a persistent storage (a
journal file by default, an RDB URL on a cluster), is the only record: `--resume` never reruns a finished
trial, and a trial left RUNNING by a killed driver is relaunched under its own number, so its Ray Train
run (`SWEEP-ID-tNNNN`) restores from its last checkpoint and its MLflow child run carries on. Optuna's
pruners implement the same algorithms as Tune's schedulers and record PRUNED trials natively.
"""

from __future__ import annotations

import math
import os
import random
import re
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imm.config import ConfigError, to_yaml
from imm.evaluate import QUALITY_PREFIXES
from orchestrator import storage, terminal, tracking
from orchestrator.cluster import driver_node_affinity, job_id, trial_env
from orchestrator.launch import RestartNotice, RunPlan, launch, new_board, open_tracked_run, plan_run
from orchestrator.lease import Lease, refuse_if_held
from orchestrator.sweep_config import Sweep

JOURNAL_FILE = "optuna.journal"
RDB_SCHEMES = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")
SWEEP_TAG, SWEEP_ID_TAG, ROLE_TAG = "imm.sweep", "imm.sweep.id", "imm.sweep.role"
TRIAL_TAG, STATE_TAG, ERROR_TAG = "imm.trial.number", "imm.trial.state", "imm.trial.error"
SWEEP_ERROR_TAG = "imm.sweep.error"  # on the parent run: why the sweep stopped


# --- the study -----------------------------------------------------------------------------------------------

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


def open_storage(url: str):
    import optuna

    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(url)


def make_sampler(sweep: Sweep, draw: int = 0):
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
            sampler = make_sampler(sweep, len(history) * PROPOSALS + attempt)
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
    sampler = make_sampler(sweep)  # it sees enqueued trials only: ask_distinct proposes the others
    study = optuna.create_study(study_name=sweep.name, storage=store, sampler=sampler, pruner=make_pruner(sweep),
                                directions=sweep.directions, load_if_exists=True)
    if "sweep_id" not in study.user_attrs:
        study.set_user_attr("sweep_id", uuid.uuid4().hex[:6])
        study.set_user_attr("metrics", sweep.metrics)
        study.set_user_attr("space", {p.key: p.describe() for p in sweep.params})
        for entry in sweep.spec.enqueue:
            study.enqueue_trial(dict(entry), skip_if_exists=True)
    return study


# --- concurrency ---------------------------------------------------------------------------------------------

def trial_resources(sweep: Sweep) -> dict[str, float]:
    per = plan_run(sweep.base, name="resources").resources_per_worker
    return {k: v * int(sweep.base.trainer.num_workers) for k, v in per.items()}


def concurrency(sweep: Sweep, cluster: dict[str, float], trials_left: int) -> tuple[int, str]:
    """(how many trials to run at once, why): max_concurrent, capped by what the cluster holds."""
    need = trial_resources(sweep)
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    fit = min(fits) if fits else trials_left
    have = ", ".join(f"{cluster.get(k, 0):g} {k}" for k in need) or "no resources asked"
    want = ", ".join(f"{v:g} {k}" for k, v in need.items())
    if fit < 1:
        raise ConfigError(f"resources: one trial needs {want}, the cluster has {have}; lower resources.workers "
                          "or cpus_per_worker/gpus_per_worker, or use a bigger cluster")
    limit = sweep.spec.max_concurrent or fit
    n = max(1, min(limit, fit, trials_left))
    return n, f"at most {n} at a time (max_concurrent={sweep.spec.max_concurrent}; each trial {want}; cluster {have})"


# --- running -------------------------------------------------------------------------------------------------

FAIL_FAST = 3  # trials: when the first ones all fail with the same error, the sweep stops


class SweepFailed(RuntimeError):
    """The sweep stopped: its first trials all failed the same way."""


@dataclass
class TrialRun:
    number: int
    trial: Any  # optuna.trial.Trial
    params: dict[str, Any]
    plan: RunPlan
    run_id: str
    board: Any
    ref: Any = None
    started: float = field(default_factory=time.perf_counter)
    last_step: int = 0
    restarts: RestartNotice | None = None


def run_trial(plan: RunPlan, ray_address: str, run_id: str, board) -> float:
    """The Ray task of one trial: fit its TorchTrainer (it closes the MLflow run); return the fit time."""
    import io

    return launch(plan, ray_address=ray_address, run_id=run_id, board=board, stream=io.StringIO()).fit_s


def run_eval_trial(model: str, plan: RunPlan, params: dict[str, Any], run_id: str) -> float:
    """The Ray task of one trial of a sweep of a trained model: evaluate it with the trial's sample.* / eval.*
    params into the trial's MLflow run; return the time it took."""
    from omegaconf import OmegaConf

    from orchestrator.evaluation import evaluate_model

    t0 = time.perf_counter()
    cfg = plan.cfg.eval
    # the sweep's eval settings (features, weights, reference, VAE, n_samples, seed, ...) over the model's, then
    # the trial's params; eval.steps, a list, goes as `steps`
    settings = {f"eval.{k}": v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if not isinstance(v, list)}
    overrides = [f"{k}={'null' if v is None else v}" for k, v in {**settings, **params}.items()]
    evaluate_model(model, steps=list(cfg.steps), overrides=overrides, tracking_uri=plan.tracking_uri, run_id=run_id)
    return time.perf_counter() - t0


@dataclass
class SweepResult:
    parent_run_id: str
    study_name: str
    storage: str
    best: list[dict]  # the best trial (one objective) or the Pareto front: number, values, params, run_id
    counts: dict[str, int]
    wall_s: float
    trial_fit_s: dict[int, float]


class SweepRunner:
    def __init__(self, sweep: Sweep, *, ray_address: str, tracking_uri: str | None, experiment: str | None,
                 resume: bool, trials: int | None, stream=None):
        self.sweep, self.ray_address, self.resume = sweep, ray_address, resume
        self.stream = stream or terminal.out()
        self.trials = trials or int(sweep.spec.trials)
        points = sweep.points()  # a trial never repeats another's parameter set (ask_distinct)
        if points is not None and len(points) < self.trials:
            self.say(f"space: {len(points)} distinct parameter sets, so {len(points)} trials (not {self.trials})")
            self.trials = len(points)
        self.used_up = False  # the space has no parameter set left
        self.tracking_uri = tracking.tracking_uri(sweep.base, tracking_uri)
        self.experiment = experiment or sweep.spec.experiment
        self.fit_s: dict[int, float] = {}
        self.bar, self._tally = None, []

    def say(self, line: str) -> None:
        terminal.say(line, self.stream)

    def _progress(self, running: list[TrialRun], changed: bool = True) -> None:
        """The sweep's bar (on a terminal): trials finished, the running ones' steps, pruned, failed, the best.
        The study is read only when a trial `changed` state."""
        if self.bar is None:
            return
        if changed:
            counts = trial_counts(self.study)
            self.bar.n = sum(counts.get(k, 0) for k in ("complete", "pruned", "fail"))
            self._tally = [f"{counts[k]} {name}" for k, name in (("pruned", "pruned"), ("fail", "failed")) if counts.get(k)]
            best = best_trials(self.study)
            if len(best) == 1:
                self._tally.append(f"best {self.sweep.metrics[0]}={best[0]['values'][0]:.4g} (trial {best[0]['number']})")
        steps = ", ".join(f"t{tr.number} evaluating" if tr.board is None else
                          f"t{tr.number} {tr.last_step}/{tr.plan.cfg.train.steps}" for tr in running)
        self.bar.set_postfix_str(", ".join([f"running {steps}" if running else "none running", *self._tally]))

    def run(self) -> SweepResult:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        t0 = time.perf_counter()
        url = storage_url(self.sweep)
        self.study = open_study(self.sweep, resume=self.resume)
        self.lease = Lease(self.study, self.sweep.name).acquire()  # before its RUNNING trials are taken for crashed ones
        try:
            return self._run(url, t0)
        finally:
            self.lease.release()
            if self.bar is not None:
                self.bar.close()

    def _run(self, url: str, t0: float) -> SweepResult:
        import optuna
        import ray

        self.sweep_id = self.study.user_attrs["sweep_id"]
        self.mlc = tracking.client(self.tracking_uri)
        self.parent_id = self._open_parent(url)
        self.say(f"sweep {self.sweep.name!r}: study in {redact(url)}; MLflow parent run {self.parent_id} "
                 f"(experiment {self.experiment!r}, {self.tracking_uri})")

        done = self._finished()
        adopted = self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING])
        n, why = concurrency(self.sweep, ray.cluster_resources(), max(self.trials - len(done), 1))
        self.say(f"trials: {len(done)} of {self.trials} done" + (f", {len(adopted)} to resume" if adopted else "")
                 + f"; {why}")
        running: dict[Any, TrialRun] = {}
        pending = list(adopted)
        self.bar = terminal.bar(self.trials, f"sweep {self.sweep.name}", "trial", self.stream, initial=len(done))
        try:
            while True:
                while len(running) < n and not self.used_up and len(self._finished()) + len(running) < self.trials:
                    tr = self._start(pending.pop(0) if pending else None)
                    if tr is not None:
                        running[tr.ref] = tr
                    self._fail_fast()
                    self._progress(list(running.values()))
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for tr in list(running.values()):
                    if tr.ref not in ready and self._poll(tr):
                        del running[tr.ref]
                        self._progress(list(running.values()))
                for ref in ready:
                    self._finish(running.pop(ref))
                    self._fail_fast()
                    self._progress(list(running.values()))
                self._progress(list(running.values()), changed=False)  # the running trials' steps, the time
        except BaseException as e:  # Ctrl-C, SIGTERM (`ray job stop`: Ray's driver exits), or a failure of this driver
            self._abandon(list(running.values()), e)
            raise
        return self._close(url, time.perf_counter() - t0)

    def _fail_fast(self) -> None:
        """Stop a sweep whose first trials all failed with one and the same error: a mistake in the sweep or its
        data, which every further trial would repeat."""
        import optuna

        finished = self._finished()
        if len(finished) < min(FAIL_FAST, self.trials) or any(t.state != optuna.trial.TrialState.FAIL for t in finished):
            return
        errors = {t.user_attrs.get("error", "") for t in finished}
        if len(errors) == 1:
            raise SweepFailed(f"its first {len(finished)} trials all failed with: {errors.pop()}")

    def _abandon(self, running: list[TrialRun], e: BaseException) -> None:
        """Stop the running trials and close every run this driver holds open, saying why; their study trials stay
        RUNNING, so --resume relaunches them from their checkpoints. Best effort: `e` is what the user must see."""
        import ray

        interrupted = isinstance(e, KeyboardInterrupt | SystemExit)
        state, status = ("interrupted", "KILLED") if interrupted else ("failed", "FAILED")
        for tr in running:
            ray.cancel(tr.ref, force=True)
        # Now, before the slower MLflow calls: `ray job stop` SIGKILLs a driver soon after its SIGTERM, and a lease
        # left behind would hold off a --resume from another machine until it expired.
        self.lease.release()
        try:
            for tr in running:
                self.mlc.set_tag(tr.run_id, STATE_TAG, state)
                if not interrupted:
                    self.mlc.set_tag(tr.run_id, ERROR_TAG, f"the sweep's driver failed: {root_cause(e)}")
                tracking.close_run(self.mlc, tr.run_id, status)
            if not interrupted:
                self.mlc.set_tag(self.parent_id, SWEEP_ERROR_TAG, str(e) if isinstance(e, SweepFailed) else root_cause(e))
            tracking.close_run(self.mlc, self.parent_id, status)
        except Exception as close_error:  # e.g. the tracking server is what failed
            self.say(f"warning: could not close the sweep's MLflow runs: {root_cause(close_error)}")

    # -- one trial --

    def _finished(self):
        import optuna

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        return self.study.get_trials(deepcopy=False, states=states)

    def _start(self, frozen=None) -> TrialRun | None:
        """Launch a new trial, or relaunch `frozen` (left RUNNING by a killed driver) under its own number."""
        import optuna
        import ray

        if frozen is None:
            asked = ask_distinct(self.study, self.sweep)
            if asked is None:
                self.used_up = True
                self.say("space: every parameter set has run; the sweep ends here")
                return None
            trial, params = asked
            number, verb = trial.number, "started"
        else:
            trial = optuna.trial.Trial(self.study, frozen._trial_id)
            params, number, verb = dict(frozen.params), frozen.number, "resumed"
        label = " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        try:
            cfg = self.sweep.trial_config(params)
        except ConfigError as e:  # a combination the per-key checks could not see: this trial fails, the sweep goes on
            trial.set_user_attr("error", str(e))  # (a finished trial's attributes are frozen: set them first)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.say(f"trial {number} failed before start: {e}")
            return None
        plan = plan_run(cfg, name=f"{self.sweep.name}-{self.sweep_id}-t{number:04d}", tracking_uri=self.tracking_uri,
                        experiment=self.experiment, param_keys=tuple(params), title=trial_title(number, params))
        tags = {
            "mlflow.parentRunId": self.parent_id,
            SWEEP_TAG: self.sweep.name,
            SWEEP_ID_TAG: self.sweep_id,
            ROLE_TAG: "trial",
            TRIAL_TAG: str(number),
            "imm.trial.optuna_id": str(trial._trial_id),
            STATE_TAG: "running",
        }
        run_id, _ = open_tracked_run(plan, ray_address=self.ray_address, extra_tags=tags, stream=self.stream)
        tracking.describe(self.mlc, run_id, f"Trial {number} of sweep `{self.sweep.name}`: {label}. Its samples at "
                          "each evaluation (rows) and sampling step count (columns):", tracking.SAMPLES_ARTIFACT)
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("run_name", plan.name)
        if self.sweep.spec.model:  # evaluate the trained model: one task with one worker's resources
            need = trial_resources(self.sweep)
            task = ray.remote(num_cpus=need.get("CPU", 1), num_gpus=need.get("GPU", 0), max_retries=0,
                              runtime_env=trial_env())(run_eval_trial)
            tr = TrialRun(number=number, trial=trial, params=params, plan=plan, run_id=run_id, board=None)
            tr.ref = task.remote(self.sweep.spec.model, plan, params, run_id)
            self.say(f"trial {number} {verb}: {label}  (run {plan.name}, evaluating {self.sweep.spec.model})")
            return tr
        board = new_board()
        task = ray.remote(num_cpus=0, max_retries=0, runtime_env=trial_env(),
                          scheduling_strategy=driver_node_affinity())(run_trial)
        tr = TrialRun(number=number, trial=trial, params=params, plan=plan, run_id=run_id, board=board,
                      restarts=RestartNotice(int(cfg.trainer.max_failures)))
        tr.ref = task.remote(plan, self.ray_address, run_id, board)
        self.say(f"trial {number} {verb}: {label}  (run {plan.name})")
        return tr

    def _poll(self, tr: TrialRun) -> bool:
        """Feed the trial's new reports to the pruner; True if it was pruned (and stopped)."""
        import ray

        if tr.board is None:  # an evaluation: nothing reported until it ends
            return False

        try:
            items = ray.get(tr.board.drain.remote(), timeout=10)
        except Exception:
            return False
        metric = self.sweep.metrics[0]
        for item in items:
            line = tr.restarts(item)
            if line:
                self.say(f"trial {tr.number}: {line}")
            if item.get("event") or metric not in item:
                continue
            step, value = int(item["step"]), float(item[metric])
            tr.last_step = max(tr.last_step, step)
            if self.bar is None:  # on a terminal the bar shows progress; elsewhere (CI, job logs) a line per report
                quality = " ".join(f"{k}={v:.4g}" for k, v in item.items() if k.startswith(QUALITY_PREFIXES))
                self.say(f"trial {tr.number} step {step}/{tr.plan.cfg.train.steps}  loss {item['train/loss']:.4g}  "
                         f"{quality}")
            if len(self.sweep.metrics) > 1 or not math.isfinite(value):
                continue
            tr.trial.report(value, step)
            if step < tr.plan.cfg.train.steps and tr.trial.should_prune():  # at the last step it is done anyway
                self._prune(tr, step, value)
                return True
        return False

    def _prune(self, tr: TrialRun, step: int, value: float) -> None:
        import optuna
        import ray

        ray.cancel(tr.ref, force=True)  # the trial's task owns its TorchTrainer: its workers go with it
        self.study.tell(tr.trial, state=optuna.trial.TrialState.PRUNED)
        self.mlc.set_tag(tr.run_id, STATE_TAG, "pruned")
        self.mlc.set_tag(tr.run_id, "imm.trial.pruned_at_step", str(step))
        # FINISHED, not KILLED (the UI draws KILLED like a crash), and said in its name: its metrics stop at `step`
        self.mlc.update_run(tr.run_id, name=trial_title(tr.number, tr.params, f" (pruned at step {step})"))
        tracking.close_run(self.mlc, tr.run_id, "FINISHED")
        ray.kill(tr.board)
        self._discard_checkpoints(tr.plan.name, tr.run_id)
        self.say(f"trial {tr.number} pruned at step {step}: {self.sweep.metrics[0]}={value:.4g}")

    def _finish(self, tr: TrialRun) -> None:
        import optuna
        import ray

        try:
            self.fit_s[tr.number] = ray.get(tr.ref)
            error = None
        except Exception as e:
            error = root_cause(e)
        finally:
            if tr.board is not None:
                ray.kill(tr.board)
        values = None
        if error is None:
            metrics = self.mlc.get_run(tr.run_id).data.metrics
            missing = [m for m in self.sweep.metrics if not math.isfinite(metrics.get(m, math.nan))]
            if missing:
                error = f"the run finished without a finite {missing} (logged: {sorted(metrics)})"
            else:
                values = [metrics[m] for m in self.sweep.metrics]
        took = time.perf_counter() - tr.started
        if error is None:
            self.study.tell(tr.trial, values)
            self.mlc.set_tag(tr.run_id, STATE_TAG, "complete")
            shown = " ".join(f"{m}={v:.4g}" for m, v in zip(self.sweep.metrics, values, strict=True))
            self.say(f"trial {tr.number} complete in {took:.0f}s: {shown}{self._best_mark(tr.number)}")
        else:
            tr.trial.set_user_attr("error", error)
            self.study.tell(tr.trial, state=optuna.trial.TrialState.FAIL)
            self.mlc.set_tag(tr.run_id, STATE_TAG, "failed")
            self.mlc.set_tag(tr.run_id, ERROR_TAG, error[:5000])
            if self.mlc.get_run(tr.run_id).info.status == "RUNNING":  # the task died before closing it
                tracking.close_run(self.mlc, tr.run_id, "FAILED")
            self.say(f"trial {tr.number} failed after {took:.0f}s: {error}")
        self._discard_checkpoints(tr.plan.name, tr.run_id)

    def _discard_checkpoints(self, run_name: str, run_id: str) -> None:
        """Delete a finished trial's Ray checkpoints: the study never runs it again, and what it made stays in its
        MLflow run (metrics, samples; a complete trial's final `checkpoint/`, without optimizer state). Best effort:
        the sweep's end deletes what is left (a pruned trial's workers may still be writing when it is cancelled)."""
        try:
            if storage.ray_storage(self.sweep.base).delete_run(run_name) and \
                    tracking.CHECKPOINT_PATH_TAG in self.mlc.get_run(run_id).data.tags:
                self.mlc.delete_tag(run_id, tracking.CHECKPOINT_PATH_TAG)
        except Exception as e:
            self.say(f"warning: could not delete the checkpoints of {run_name}: {root_cause(e)}")

    def _best_mark(self, number: int) -> str:
        if len(self.sweep.metrics) > 1:
            return ""
        try:
            return "  (best so far)" if self.study.best_trial.number == number else ""
        except ValueError:
            return ""

    # -- the parent run --

    def _open_parent(self, url: str) -> str:
        from mlflow.entities import Param

        exp_id = tracking.experiment_id(self.mlc, self.experiment, tracking.artifact_root(self.tracking_uri))
        existing = tracking.find_run_by_tags(self.mlc, exp_id, {SWEEP_ID_TAG: self.sweep_id, ROLE_TAG: "parent"})
        if existing is not None:
            self.mlc.update_run(existing.info.run_id, status="RUNNING")
            if job_id():  # the job that runs the sweep now
                self.mlc.set_tag(existing.info.run_id, tracking.JOB_TAG, job_id())
            return existing.info.run_id
        tags = {SWEEP_TAG: self.sweep.name, SWEEP_ID_TAG: self.sweep_id, ROLE_TAG: "parent",
                "imm.study.name": self.study.study_name, "imm.study.storage": redact(url)}
        if job_id():
            tags[tracking.JOB_TAG] = job_id()
        commit = tracking.git_commit()
        if commit:
            tags["mlflow.source.git.commit"], tags["git.dirty"] = commit[0], str(commit[1]).lower()
        run = self.mlc.create_run(exp_id, run_name=self.sweep.name, tags=tags)
        self.share_table(exp_id)
        spec = self.sweep.spec
        params = {
            "sweep.base": spec.base.config,
            "sweep.sampler": spec.sampler.name,
            "sweep.pruner": spec.pruner.name,
            "sweep.objective": ", ".join(f"{o.direction} {o.metric}" for o in spec.objective),
            "sweep.trials": str(self.trials),
            **{f"space.{p.key}": p.describe().split(": ", 1)[1] for p in self.sweep.params},
        }
        self.mlc.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
        self.mlc.log_text(run.info.run_id, self.sweep.to_yaml(), "sweep.yaml")
        self.mlc.log_dict(run.info.run_id, {p.key: p.describe() for p in self.sweep.params}, "search_space.json")
        self.mlc.log_text(run.info.run_id, to_yaml(self.sweep.base), "base_config.yaml")
        return run.info.run_id

    def share_table(self, exp_id: str) -> str:
        """The sweep's comparison table in MLflow's UI: its trials, best first, with the objective, the swept keys
        and each trial's state as columns (a shared view, `view_key`)."""
        m = self.sweep.metrics
        columns = [*(f"metrics.`{x}`" for x in m), *(f"params.`{p.key}`" for p in self.sweep.params), f"tags.`{STATE_TAG}`"]
        return tracking.share_view(self.mlc, exp_id, view_key(self.sweep.name, self.sweep_id), columns=columns,
                                   search=f"tags.`{SWEEP_ID_TAG}` = '{self.sweep_id}' and tags.`{ROLE_TAG}` = 'trial'",
                                   order_by=f"metrics.`{m[0]}`", ascending=self.sweep.directions[0] == "minimize")

    def _close(self, url: str, wall_s: float) -> SweepResult:
        from orchestrator import sweep_report

        for t in self._finished():
            if "run_name" in t.user_attrs:
                self._discard_checkpoints(t.user_attrs["run_name"], t.user_attrs["mlflow_run_id"])
        counts = trial_counts(self.study)
        best = best_trials(self.study)
        sweep_report.log_to_parent(self.mlc, self.parent_id, self.study, self.sweep, best)
        tracking.close_run(self.mlc, self.parent_id, "FINISHED")
        return SweepResult(parent_run_id=self.parent_id, study_name=self.study.study_name, storage=redact(url),
                           best=best, counts=counts, wall_s=wall_s, trial_fit_s=dict(self.fit_s))


def view_key(name: str, sweep_id: str) -> str:
    return f"{name}-{sweep_id}"


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


def root_cause(e: BaseException) -> str:
    """The innermost 'SomeError: message' line of a trial's failure (Ray wraps the worker's error twice)."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[\w.]*(Error|Exception|Interrupt)\b.*:", ln)]
    if lines:
        return lines[-1][:1000]
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:1000]


def trial_title(number: int, params: dict[str, Any], note: str = "") -> str:
    """A trial's name in MLflow's runs table: its number first (the table cuts long names), then its swept values
    (`t3 group_size=8 kernel=laplace k=10`)."""
    return f"t{number} {swept_values(params)}{note}"[:250]


def swept_values(params: dict[str, Any]) -> str:
    """`group_size=8 kernel=laplace k=10`: swept values by the last part of their key."""
    return " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
