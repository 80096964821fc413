"""A sweep's MLflow record: a parent run (the sweep file, its space, at the end the report) and a nested run per
trial whose tags say its sweep, number and state. The runner tells it what happens to the trials; nothing here
decides anything about them."""

from __future__ import annotations

import io
from typing import Any

from imm.config import to_yaml
from orchestrator.infra.cluster import job_id
from orchestrator.run.launch import RunPlan, open_tracked_run
from orchestrator.sweep import report
from orchestrator.sweep.naming import (
    ERROR_TAG,
    ROLE_TAG,
    STATE_TAG,
    SWEEP_ERROR_TAG,
    SWEEP_ID_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    params_line,
    trial_title,
    view_key,
)
from orchestrator.sweep.space import Sweep
from orchestrator.sweep.study import redact
from orchestrator.sweep.trials import TrialRecord
from orchestrator.track import run_record, tracking


class SweepRecords:
    def __init__(self, sweep: Sweep, study, *, tracking_uri: str, experiment: str, trials: int, storage_url: str):
        self.sweep, self.study, self.experiment, self.tracking_uri = sweep, study, experiment, tracking_uri
        self.sweep_id = study.user_attrs["sweep_id"]
        self.mlc = tracking.client(tracking_uri)
        self.exp_id = tracking.experiment_id(self.mlc, experiment, tracking.artifact_root(tracking_uri))
        self.parent_id = self._open_parent(trials, storage_url)

    # -- the parent run --

    def _open_parent(self, trials: int, url: str) -> str:
        """The sweep's parent run: found again by the study's sweep id (a resumed sweep), else created."""
        from mlflow.entities import Param

        existing = tracking.find_run_by_tags(self.mlc, self.exp_id, {SWEEP_ID_TAG: self.sweep_id, ROLE_TAG: "parent"})
        if existing is not None:
            self.mlc.update_run(existing.info.run_id, status="RUNNING")
            if job_id():  # the job that runs the sweep now
                self.mlc.set_tag(existing.info.run_id, tracking.JOB_TAG, job_id())
            return existing.info.run_id
        tags = {SWEEP_TAG: self.sweep.name, SWEEP_ID_TAG: self.sweep_id, ROLE_TAG: "parent",
                "imm.study.name": self.study.study_name, "imm.study.storage": redact(url), **tracking.origin_tags()}
        run = self.mlc.create_run(self.exp_id, run_name=self.sweep.name, tags=tags)
        self.study.set_user_attr(run_record.PARENT_ATTR, {"run_id": run.info.run_id, "tracking_uri": self.tracking_uri})
        self.share_table()
        spec = self.sweep.spec
        params = {
            "sweep.base": spec.base.config,
            "sweep.sampler": spec.sampler.name,
            "sweep.pruner": spec.pruner.name,
            "sweep.objective": ", ".join(f"{o.direction} {o.metric}" for o in spec.objective),
            "sweep.trials": str(trials),
            **{f"space.{p.key}": p.describe().split(": ", 1)[1] for p in self.sweep.params},
        }
        self.mlc.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
        self.mlc.log_text(run.info.run_id, self.sweep.to_yaml(), "sweep.yaml")
        self.mlc.log_dict(run.info.run_id, {p.key: p.describe() for p in self.sweep.params}, "search_space.json")
        self.mlc.log_text(run.info.run_id, to_yaml(self.sweep.base), "base_config.yaml")
        return run.info.run_id

    def share_table(self) -> str:
        """The sweep's comparison table in MLflow's UI: its trials, best first, with the objective, the swept keys
        and each trial's state as columns (a shared view, `view_key`)."""
        m = self.sweep.metrics
        columns = [*(f"metrics.`{x}`" for x in m), *(f"params.`{p.key}`" for p in self.sweep.params), f"tags.`{STATE_TAG}`"]
        return tracking.share_view(self.mlc, self.exp_id, view_key(self.sweep.name, self.sweep_id), columns=columns,
                                   search=f"tags.`{SWEEP_ID_TAG}` = '{self.sweep_id}' and tags.`{ROLE_TAG}` = 'trial'",
                                   order_by=f"metrics.`{m[0]}`", ascending=self.sweep.directions[0] == "minimize")

    def finished(self, best: list[dict], known: dict[int, dict[str, float]]) -> None:
        report.log_to_parent(self.mlc, self.parent_id, self.study, self.sweep, best, known)
        tracking.close_run(self.mlc, self.parent_id, "FINISHED")

    def abandoned(self, runs: list[str], *, interrupted: bool, why: str, sweep_error: str) -> None:
        """The driver stops (Ctrl-C, SIGTERM, or a failure: `why` on the open trial runs, `sweep_error` on the
        parent): close the open trial runs and the parent. Those of the sweep MLflow still shows RUNNING are closed
        too: one the driver was opening when it was stopped is not yet among `runs`."""
        state, status = ("interrupted", "KILLED") if interrupted else ("failed", "FAILED")
        still_open = self.mlc.search_runs([self.exp_id], filter_string=f"tags.`{SWEEP_ID_TAG}` = '{self.sweep_id}' and "
                                          f"tags.`{ROLE_TAG}` = 'trial' and attributes.status = 'RUNNING'")
        for run_id in dict.fromkeys([*runs, *(r.info.run_id for r in still_open)]):
            self.mlc.set_tag(run_id, STATE_TAG, state)
            if not interrupted:
                self.mlc.set_tag(run_id, ERROR_TAG, f"the sweep's driver failed: {why}")
            tracking.close_run(self.mlc, run_id, status)
        if not interrupted:
            self.mlc.set_tag(self.parent_id, SWEEP_ERROR_TAG, sweep_error)
        tracking.close_run(self.mlc, self.parent_id, status)

    # -- the trials' runs --

    def trial_record(self, number: int, optuna_id: int, params: dict[str, Any], *, new: bool) -> TrialRecord:
        """What the trial's task opens its MLflow run with: nested under the parent, tagged with the sweep, the
        trial and its state (found again when a resumed trial reopens it; a `new` trial's is not looked for)."""
        tags = {
            "mlflow.parentRunId": self.parent_id,
            SWEEP_TAG: self.sweep.name,
            SWEEP_ID_TAG: self.sweep_id,
            ROLE_TAG: "trial",
            TRIAL_TAG: str(number),
            "imm.trial.optuna_id": str(optuna_id),
            STATE_TAG: "running",
            **tracking.origin_tags(),  # the driver's: its job and commit, which the trial's task does not know
        }
        text = (f"Trial {number} of sweep `{self.sweep.name}`: {params_line(params)}. Its samples at each evaluation "
                "(rows) and sampling step count (columns):")
        return TrialRecord(exp_id=self.exp_id, tags=tags, description=(text, tracking.SAMPLES_ARTIFACT), new=new)

    def trial_opened(self, plan: RunPlan, record: TrialRecord, *, ray_address: str) -> str:
        """Open the trial's run here, for a trial whose task failed before it could."""
        run_id, _ = open_tracked_run(plan, ray_address=ray_address, extra_tags=record.tags, exp_id=record.exp_id,
                                     new=False, description=record.description, stream=io.StringIO())
        return run_id

    def best_so_far(self, values: list[float], finished: int) -> None:
        """The objective under its own name on the parent run, a point (stepped by the trials finished) each time a
        trial beats the best: the parent's chart shows the sweep's progress while it runs, at a write per new best."""
        report.log_best(self.mlc, self.parent_id, self.sweep, values, finished)

    def trial_pruned(self, run_id: str, number: int, params: dict[str, Any], step: int) -> None:
        self.mlc.set_tag(run_id, STATE_TAG, "pruned")
        self.mlc.set_tag(run_id, "imm.trial.pruned_at_step", str(step))
        # FINISHED, not KILLED (the UI draws KILLED like a crash), and said in its name: its metrics stop at `step`
        self.mlc.update_run(run_id, name=trial_title(number, params, f" (pruned at step {step})"))
        tracking.close_run(self.mlc, run_id, "FINISHED")

    def trial_complete(self, run_id: str) -> None:
        self.mlc.set_tag(run_id, STATE_TAG, "complete")

    def trial_failed(self, run_id: str, error: str) -> None:
        self.mlc.set_tag(run_id, STATE_TAG, "failed")
        self.mlc.set_tag(run_id, ERROR_TAG, error[:5000])
        if self.mlc.get_run(run_id).info.status == "RUNNING":  # the task died before closing it
            tracking.close_run(self.mlc, run_id, "FAILED")

    def logged_metrics(self, run_id: str) -> dict[str, float]:
        """The run's latest metrics: the record of a trial that returned none of its own (one relaunched after it
        had finished, whose trainer restored the final checkpoint and trained no further step)."""
        return dict(self.mlc.get_run(run_id).data.metrics)

    def checkpoints_discarded(self, run_id: str) -> None:
        """The run no longer points at Ray checkpoints that are gone (its final `checkpoint/` artifact stays)."""
        from mlflow.exceptions import MlflowException

        try:
            self.mlc.delete_tag(run_id, tracking.CHECKPOINT_PATH_TAG)
        except MlflowException as e:  # it had none
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
