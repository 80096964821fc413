"""How a running trial ends, told to the Optuna study, the trial's MLflow run and the terminal: its reports fed to
the pruner as they arrive (`poll`, one call for all running trials, which prunes and stops them), or its Ray task's
result when it ends (`finish`: complete or failed). Either way its Ray checkpoints are discarded; the sweep's loop
(`runner`) only asks and waits.
"""

from __future__ import annotations

import math
import time

from orchestrator.run.board import Slot, new_board
from orchestrator.sweep import trials
from orchestrator.sweep.progress import SweepProgress
from orchestrator.sweep.records import SweepRecords
from orchestrator.sweep.space import Sweep
from orchestrator.sweep.study import Tally
from orchestrator.sweep.trials import TrialRun
from orchestrator.terminal import root_cause


class TrialOutcomes:
    """The pruner's feed and the study's tell for one sweep. `tally`: the finished trials' counts and the best;
    `fit_s`: each finished trial's training time; `metrics`: each complete trial's final metrics (the report's)."""

    def __init__(self, sweep: Sweep, study, records: SweepRecords, progress: SweepProgress, ray_address: str):
        self.sweep, self.study, self.records, self.progress = sweep, study, records, progress
        self.say, self.ray_address = progress.say, ray_address
        self.fit_s: dict[int, float] = {}
        self.metrics: dict[int, dict[str, float]] = {}
        self.discarded: set[int] = set()  # trials that ended here and whose checkpoints are gone
        self.tally = Tally(study)
        self.board = None if sweep.spec.model else new_board()  # the sweep's one board: each trial reports in a slot

    def slot(self, number: int) -> Slot | None:
        """Where trial `number` reports (None for an evaluation, which reports nothing until it ends)."""
        return None if self.board is None else Slot(self.board, number)

    def poll(self, running: list[TrialRun], ended=frozenset()) -> list[TrialRun]:
        """Feed the running trials' new reports, drained in one call, to the pruner; those it pruned (and stopped).
        Those whose task has `ended` (their ObjectRefs) are fed, not pruned: `finish` tells how they ended."""
        import ray

        if self.board is None or not running:
            return []
        try:
            items = ray.get(self.board.drain_all.remote(), timeout=10)
        except Exception:
            return []
        return [tr for tr in running if self.feed(tr, items.get(tr.number, []), prune=tr.ref not in ended)]

    def feed(self, tr: TrialRun, items: list[dict], prune: bool = True) -> bool:
        """Feed a trial's reports to the pruner (with `prune`); True if it was pruned (and stopped). The restart
        lines and the progress are shown either way."""
        metric = self.sweep.metrics[0]
        for item in items:
            if item.get("event") == trials.RUN_EVENT:
                self._opened(tr, item["run_id"])
            line = tr.restarts(item)
            if line:
                self.say(f"trial {tr.number}: {line}")
            if item.get("event") or metric not in item:
                continue
            step, value = int(item["step"]), float(item[metric])
            tr.last_step = max(tr.last_step, step)
            self.progress.reported(tr, item)
            if len(self.sweep.metrics) > 1 or not math.isfinite(value):
                continue
            tr.trial.report(value, step)
            if prune and step < tr.steps and tr.trial.should_prune():  # at the last step it is done anyway
                self._prune(tr, step, value)
                return True
        return False

    def _opened(self, tr: TrialRun, run_id: str) -> None:
        """The trial's task opened its MLflow run: the study's trial points at it."""
        if run_id and tr.run_id != run_id:
            tr.run_id = run_id
            tr.trial.set_user_attr("mlflow_run_id", run_id)

    def close(self) -> None:
        import ray

        if self.board is not None:
            ray.kill(self.board)

    def _prune(self, tr: TrialRun, step: int, value: float) -> None:
        import optuna

        trials.stop_task(self.sweep, tr)
        self.study.tell(tr.trial, state=optuna.trial.TrialState.PRUNED)
        self.tally.add(tr.number, optuna.trial.TrialState.PRUNED)
        self.records.trial_pruned(tr.run_id, tr.number, tr.params, step)
        self.discard_checkpoints(tr.plan.name, tr.run_id)
        self.say(f"trial {tr.number} pruned at step {step}: {self.sweep.metrics[0]}={value:.4g}")

    def finish(self, tr: TrialRun) -> None:
        """The trial's task ended: tell the study its objective values (complete) or its error (failed). Its last
        reports were fed by the `poll` after its end (a task flushes its pushes before it returns)."""
        import optuna
        import ray

        values, error = None, None
        try:
            outcome: trials.TrialOutcome = ray.get(tr.ref)
            self._opened(tr, outcome.run_id)
            self.fit_s[tr.number] = outcome.work_s
            # a trial relaunched after it had finished trains no further step and reports nothing: its record has them
            metrics = outcome.metrics if set(self.sweep.metrics) <= set(outcome.metrics) else \
                {**self.records.logged_metrics(tr.run_id), **outcome.metrics}
            values = trials.objective_values(self.sweep, metrics)
            self.metrics[tr.number] = metrics
        except Exception as e:
            error = root_cause(e)
        took = time.perf_counter() - tr.started
        if error is None:
            self.study.tell(tr.trial, values)
            best = self.tally.add(tr.number, optuna.trial.TrialState.COMPLETE, values)
            self.records.trial_complete(tr.run_id)
            if best:
                self.records.best_so_far(values, self.tally.finished)
            shown = " ".join(f"{m}={v:.4g}" for m, v in zip(self.sweep.metrics, values, strict=True))
            self.say(f"trial {tr.number} complete in {took:.0f}s: {shown}" + ("  (best so far)" if best else ""))
        else:
            if tr.run_id is None:  # its task failed before it opened its run: the failure is recorded all the same
                self._opened(tr, self.records.trial_opened(tr.plan, tr.record, ray_address=self.ray_address))
            tr.trial.set_user_attr("error", error)
            self.study.tell(tr.trial, state=optuna.trial.TrialState.FAIL)
            self.tally.add(tr.number, optuna.trial.TrialState.FAIL)
            self.records.trial_failed(tr.run_id, error)
            self.say(f"trial {tr.number} failed after {took:.0f}s: {error}")
        if self.discard_checkpoints(tr.plan.name, tr.run_id):
            self.discarded.add(tr.number)

    def failed_before_start(self, trial, error: str) -> None:
        """A trial whose config the per-key checks could not refuse: it fails, the sweep goes on."""
        import optuna

        trial.set_user_attr("error", error)  # (a finished trial's attributes are frozen: set them first)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self.tally.add(trial.number, optuna.trial.TrialState.FAIL)
        self.say(f"trial {trial.number} failed before start: {error}")

    def discard_checkpoints(self, run_name: str, run_id: str | None) -> bool:
        """A finished trial's Ray checkpoints go (a complete trial's final `checkpoint/`, without optimizer state,
        stays in its MLflow run); True if done. Best effort: the sweep's end deletes what is left (a pruned trial's
        workers may still be writing when it is cancelled)."""
        try:
            if trials.discard_checkpoints(self.sweep, run_name) and run_id:
                self.records.checkpoints_discarded(run_id)
            return True
        except Exception as e:
            self.say(f"warning: could not delete the checkpoints of {run_name}: {root_cause(e)}")
            return False
