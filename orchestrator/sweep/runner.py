"""The sweep's loop: ask the study for a trial, launch it on Ray, poll its reports for the pruner, tell the study
how it ended, as Optuna's own `optimize` loop reads. How each trial ends is told to the study, MLflow
(`records`) and the terminal (`progress`) by `outcomes`; the study (`study`) and the trials' Ray tasks (`trials`) live
in their own modules.

At most `max_concurrent` trials run, fewer if the cluster cannot hold them. Intermediate metrics feed an Optuna
pruner (ASHA, Hyperband, median), and a pruned trial's task is cancelled.

Why not `Tuner` + `OptunaSearch`: that keeps the sweep's state twice (Tune's experiment snapshot and the
Optuna study), and after the driver is SIGKILLed the two can disagree: Tune snapshots periodically, so a
trial that finished after the last snapshot would run again. Here the study, in a persistent storage (a
journal file by default, an RDB URL on a cluster), is the only record: `--resume` never reruns a finished
trial, and a trial left RUNNING by a killed driver is relaunched under its own number, so its Ray Train
run (`SWEEP-ID-tNNNN`) restores from its last checkpoint and its MLflow child run carries on. Optuna's
pruners implement the same algorithms as Tune's schedulers and record PRUNED trials natively.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

from imm.config import ConfigError
from orchestrator.run.launch import plan_run
from orchestrator.run.printer import RestartNotice
from orchestrator.sweep import trials
from orchestrator.sweep.lease import Lease
from orchestrator.sweep.naming import params_line, trial_title
from orchestrator.sweep.outcomes import TrialOutcomes
from orchestrator.sweep.progress import SweepProgress
from orchestrator.sweep.records import SweepRecords
from orchestrator.sweep.space import Sweep
from orchestrator.sweep.study import (
    ask_distinct,
    best_trials,
    finished_trials,
    open_study,
    redact,
    storage_url,
    trial_counts,
)
from orchestrator.sweep.trials import TrialRun
from orchestrator.terminal import root_cause
from orchestrator.track import tracking

ABANDON_WAIT_S = 10.0  # seconds a stopping driver waits for its trials' processes to end
FAIL_FAST = 3  # trials: when the first ones all fail with the same error, the sweep stops


class SweepFailed(RuntimeError):
    """The sweep stopped: its first trials all failed the same way."""


def fail_fast(study, tally, trials: int) -> None:
    """Stop a sweep whose first trials all failed with one and the same error: a mistake in the sweep or its data,
    which every further trial would repeat. The study is read only while every finished trial has failed."""
    if not tally.all_failed or tally.finished < min(FAIL_FAST, trials):
        return
    errors = {t.user_attrs.get("error", "") for t in finished_trials(study)}
    if len(errors) == 1:
        raise SweepFailed(f"its first {tally.finished} trials all failed with: {errors.pop()}")


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
        self.progress = SweepProgress(sweep.name, sweep.metrics[0], stream)
        self.trials = trials or int(sweep.spec.trials)
        points = sweep.points()  # a trial never repeats another's parameter set (ask_distinct)
        if points is not None and len(points) < self.trials:
            self.say(f"space: {len(points)} distinct parameter sets, so {len(points)} trials (not {self.trials})")
            self.trials = len(points)
        self.used_up = False  # the space has no parameter set left
        self.outcomes: TrialOutcomes | None = None
        self.tracking_uri = tracking.tracking_uri(sweep.base, tracking_uri)
        self.experiment = experiment or sweep.spec.experiment

    @property
    def stream(self):
        return self.progress.stream

    def say(self, line: str) -> None:
        self.progress.say(line)

    def run(self) -> SweepResult:
        import optuna
        import ray

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        t0 = time.perf_counter()
        url = storage_url(self.sweep)
        self.study = open_study(self.sweep, resume=self.resume)
        self.lease = Lease(self.study, self.sweep.name).acquire()  # before its RUNNING trials are taken for crashed ones
        try:
            self.concurrent = trials.concurrency(self.sweep, ray.cluster_resources(),
                                                 max(self.trials - len(finished_trials(self.study)), 1))
            warming = trials.warm_up(self.sweep, self.concurrent[0])
            self.records = SweepRecords(self.sweep, self.study, tracking_uri=self.tracking_uri,
                                        experiment=self.experiment, trials=self.trials, storage_url=url)
            self.outcomes = TrialOutcomes(self.sweep, self.study, self.records, self.progress, self.ray_address)
            self.say(f"sweep {self.sweep.name!r}: study in {redact(url)}; MLflow parent run {self.records.parent_id} "
                     f"(experiment {self.experiment!r}, {self.tracking_uri})")
            ray.wait(warming, num_returns=len(warming), timeout=60)  # the first trials then find their processes ready
            self._loop()
            return self._close(url, time.perf_counter() - t0)
        finally:
            self.lease.release()
            self.progress.close()
            if self.outcomes is not None:
                self.outcomes.close()

    def _loop(self) -> None:
        import optuna
        import ray

        tally = self.outcomes.tally
        adopted = self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING])
        n, why = self.concurrent
        self.say(f"trials: {tally.finished} of {self.trials} done" + (f", {len(adopted)} to resume" if adopted else "")
                 + f"; {why}")
        running: dict[Any, TrialRun] = {}
        pending = list(adopted)
        self.progress.open(self.trials, tally.finished)

        def changed():
            self.progress.update(list(running.values()), tally)

        try:
            while True:
                while len(running) < n and not self.used_up and tally.finished + len(running) < self.trials:
                    tr = self._start(pending.pop(0) if pending else None)
                    if tr is not None:
                        running[tr.ref] = tr
                    fail_fast(self.study, tally, self.trials)
                    changed()
                if not running:
                    return
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                if ready:  # and every other trial that has ended by now
                    ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
                for tr in self.outcomes.poll(list(running.values()), ended=set(ready)):
                    del running[tr.ref]
                    changed()
                for ref in ready:
                    self.outcomes.finish(running.pop(ref))
                    fail_fast(self.study, tally, self.trials)
                    changed()
                self.progress.update(list(running.values()))  # the steps, the time
        except BaseException as e:  # Ctrl-C, SIGTERM (`ray job stop`: Ray's driver exits), or a failure of this driver
            abandon(list(running.values()), e, lease=self.lease, records=self.records, say=self.say)
            raise

    # -- ask and launch --

    def _start(self, frozen=None) -> TrialRun | None:
        """Launch a new trial, or relaunch `frozen` (left RUNNING by a killed driver) under its own number."""
        import optuna

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
        try:
            cfg = self.sweep.trial_config(params)
        except ConfigError as e:  # a combination the per-key checks could not see
            self.outcomes.failed_before_start(trial, str(e))
            return None
        plan = plan_run(cfg, name=f"{self.sweep.name}-{self.records.sweep_id}-t{number:04d}",
                        tracking_uri=self.tracking_uri, experiment=self.experiment, param_keys=tuple(params),
                        title=trial_title(number, params), fresh=True)
        record = self.records.trial_record(number, trial._trial_id, params, new=frozen is None)
        trial.set_user_attr("run_name", plan.name)
        evaluating = bool(self.sweep.spec.model)
        tr = TrialRun(number=number, trial=trial, params=params, plan=plan, record=record,
                      run_id=None if frozen is None else frozen.user_attrs.get("mlflow_run_id"),
                      board=self.outcomes.slot(number),
                      restarts=None if evaluating else RestartNotice(int(cfg.trainer.max_failures)))
        tr.ref = trials.start_task(self.sweep, tr, self.ray_address)
        what = f", evaluating {self.sweep.spec.model}" if evaluating else ""
        self.say(f"trial {number} {verb}: {params_line(params)}  (run {plan.name}{what})")
        return tr

    # -- the end --

    def _close(self, url: str, wall_s: float) -> SweepResult:
        for t in finished_trials(self.study):  # what a cancelled trial wrote late, or an earlier driver left
            if "run_name" in t.user_attrs and t.number not in self.outcomes.discarded:
                self.outcomes.discard_checkpoints(t.user_attrs["run_name"], t.user_attrs.get("mlflow_run_id"))
        best = best_trials(self.study)
        self.records.finished(best, self.outcomes.metrics)
        return SweepResult(parent_run_id=self.records.parent_id, study_name=self.study.study_name, storage=redact(url),
                           best=best, counts=trial_counts(self.study), wall_s=wall_s, trial_fit_s=dict(self.outcomes.fit_s))


def abandon(running: list[TrialRun], e: BaseException, *, lease: Lease, records: SweepRecords, say) -> None:
    """Stop the running trials and close every run the driver holds open, saying why; their study trials stay
    RUNNING, so --resume relaunches them from their checkpoints. Best effort: `e` is what the user must see."""
    import ray

    # Only the tasks still running: cancelling one as it completes can crash the driver's Ray (a race of the cancel
    # with the task's reply, "Tried to complete task that was not pending"; ray-project/ray#54798).
    refs = [tr.ref for tr in running]
    _, unfinished = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
    for ref in unfinished:
        ray.cancel(ref, force=True)
    # Now, before the slower MLflow calls: `ray job stop` SIGKILLs a driver soon after its SIGTERM, and a lease
    # left behind would hold off a --resume from another machine until it expired.
    lease.release()
    try:
        # A cancel only asks: a trial's process still alive could reopen its run (as RUNNING) after it is closed
        # here. Its ObjectRef is ready once the process is gone.
        if running:
            ray.wait([tr.ref for tr in running], num_returns=len(running), timeout=ABANDON_WAIT_S)
        # (a trial whose task had not yet told its run's id: `abandoned` finds the sweep's open runs by their tags)
        records.abandoned([tr.run_id for tr in running if tr.run_id],
                          interrupted=isinstance(e, KeyboardInterrupt | SystemExit), why=root_cause(e),
                          sweep_error=str(e) if isinstance(e, SweepFailed) else root_cause(e))
    except Exception as close_error:  # e.g. the tracking server is what failed
        say(f"warning: could not close the sweep's MLflow runs: {root_cause(close_error)}")
