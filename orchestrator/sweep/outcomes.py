"""How a running trial ends, told to the Optuna study, the trial's MLflow run and the terminal: its reports fed to
the pruner as they arrive (`poll`, which prunes and stops it), or its Ray task's result when it ends (`finish`:
complete or failed). Either way its Ray checkpoints are discarded; the sweep's loop (`runner`) only asks and waits.
"""

from __future__ import annotations

import math
import time

from orchestrator.sweep import trials
from orchestrator.sweep.progress import SweepProgress
from orchestrator.sweep.records import SweepRecords
from orchestrator.sweep.space import Sweep
from orchestrator.sweep.trials import TrialRun
from orchestrator.terminal import root_cause


def best_mark(study, sweep: Sweep, number: int) -> str:
    """`  (best so far)` after a complete trial's line when it is the study's best (one objective)."""
    if len(sweep.metrics) > 1:
        return ""
    try:
        return "  (best so far)" if study.best_trial.number == number else ""
    except ValueError:
        return ""


class TrialOutcomes:
    """The pruner's feed and the study's tell for one sweep. `fit_s`: each finished trial's training time."""

    def __init__(self, sweep: Sweep, study, records: SweepRecords, progress: SweepProgress):
        self.sweep, self.study, self.records, self.progress = sweep, study, records, progress
        self.say = progress.say
        self.fit_s: dict[int, float] = {}

    def poll(self, tr: TrialRun, prune: bool = True) -> bool:
        """Feed the trial's new reports to the pruner (with `prune`); True if it was pruned (and stopped). The
        restart lines and the progress are shown either way."""
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
            self.progress.reported(tr, item)
            if len(self.sweep.metrics) > 1 or not math.isfinite(value):
                continue
            tr.trial.report(value, step)
            if prune and step < tr.steps and tr.trial.should_prune():  # at the last step it is done anyway
                self._prune(tr, step, value)
                return True
        return False

    def _prune(self, tr: TrialRun, step: int, value: float) -> None:
        import optuna
        import ray

        trials.stop_task(self.sweep, tr)
        self.study.tell(tr.trial, state=optuna.trial.TrialState.PRUNED)
        self.records.trial_pruned(tr.run_id, tr.number, tr.params, step)
        ray.kill(tr.board)
        self.discard_checkpoints(tr.plan.name, tr.run_id)
        self.say(f"trial {tr.number} pruned at step {step}: {self.sweep.metrics[0]}={value:.4g}")

    def finish(self, tr: TrialRun) -> None:
        """The trial's task ended: tell the study its objective values (complete) or its error (failed)."""
        import optuna
        import ray

        values, error = None, None
        self.poll(tr, prune=False)  # what it pushed since the last poll: a restart's line above all
        try:
            outcome: trials.TrialOutcome = ray.get(tr.ref)
            self.fit_s[tr.number] = outcome.work_s
            # a trial relaunched after it had finished trains no further step and reports nothing: its record has them
            metrics = outcome.metrics if set(self.sweep.metrics) <= set(outcome.metrics) else \
                {**self.records.logged_metrics(tr.run_id), **outcome.metrics}
            values = trials.objective_values(self.sweep, metrics)
        except Exception as e:
            error = root_cause(e)
        finally:
            if tr.board is not None:
                ray.kill(tr.board)
        took = time.perf_counter() - tr.started
        if error is None:
            self.study.tell(tr.trial, values)
            self.records.trial_complete(tr.run_id)
            shown = " ".join(f"{m}={v:.4g}" for m, v in zip(self.sweep.metrics, values, strict=True))
            self.say(f"trial {tr.number} complete in {took:.0f}s: {shown}{best_mark(self.study, self.sweep, tr.number)}")
        else:
            tr.trial.set_user_attr("error", error)
            self.study.tell(tr.trial, state=optuna.trial.TrialState.FAIL)
            self.records.trial_failed(tr.run_id, error)
            self.say(f"trial {tr.number} failed after {took:.0f}s: {error}")
        self.discard_checkpoints(tr.plan.name, tr.run_id)

    def discard_checkpoints(self, run_name: str, run_id: str) -> None:
        """A finished trial's Ray checkpoints go (a complete trial's final `checkpoint/`, without optimizer state,
        stays in its MLflow run). Best effort: the sweep's end deletes what is left (a pruned trial's workers may
        still be writing when it is cancelled)."""
        try:
            if trials.discard_checkpoints(self.sweep, run_name):
                self.records.checkpoints_discarded(run_id)
        except Exception as e:
            self.say(f"warning: could not delete the checkpoints of {run_name}: {root_cause(e)}")
