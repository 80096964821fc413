"""Rank 0's MLflow writer: a run's metrics and sample grid, sent once a checkpoint covers them, by the one attempt
that holds the run.

A run's driver, or a sweep trial's own task, opens and closes the MLflow run (`orchestrator.track.tracking`); in the
workers only rank 0 writes to it, through `RankZeroLogger`. A worker cut off from a run that a later attempt took
over raises `Superseded`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from orchestrator.track.tracking import (
    LR_KEY,
    MAX_METRICS_PER_BATCH,
    SAMPLES_ARTIFACT,
    WRITER_TAG,
    client,
    last_logged_step,
    shown_value,
)

PENDING_FILE = "mlflow_pending.json"  # in a checkpoint: the metrics it covers, sent to MLflow after it is saved


def read_pending(folder: str | Path) -> list | None:
    """The metrics a checkpoint folder covers (`RankZeroLogger.stash`), or None."""
    import json

    path = Path(folder) / PENDING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class Superseded(RuntimeError):
    """A later attempt of the run took it over: this one was cut off (its node partitioned, then declared dead and
    its work restarted elsewhere) and must write nothing more."""


class RankZeroLogger:
    """Rank 0's MLflow writer, holding metrics and sample plots until a checkpoint covers their step.

    Each attempt of a run claims it (`WRITER_TAG`) when it starts, and checks the claim before every checkpoint
    and every commit (`check_writer`). A worker whose node was cut off from the cluster lives on: Ray declares
    the node dead and restarts the work elsewhere, and when the link comes back the old worker's next write would
    land beside the new attempt's. It finds the claim taken instead and stops (`Superseded`).

    A worker that dies after step s restarts from the last checkpoint c <= s and computes steps c+1..s
    again. Logging them at once would leave two values for those steps; MLflow cannot delete metric points,
    so nothing past the last registered checkpoint is sent (`commit` runs once Ray registered it). As a second guard
    (Ray may restore an older checkpoint than the last one saved), steps already in the run are skipped.

    The samples of every evaluation are one artifact, `samples.png` (sample_grids), sent again with a row more at
    each commit: a restarted worker starts from the rows already logged.
    """

    def __init__(self, tracking_uri: str, run_id: str, final_step: int | None = None):
        import uuid

        self.client = client(tracking_uri)
        self.run_id = run_id
        self.final_step = final_step
        self.writer = uuid.uuid4().hex
        self.client.set_tag(run_id, WRITER_TAG, self.writer)
        self.logged_through = last_logged_step(self.client, run_id)
        self.last_lr: float | None = None
        self.pending: list = []
        self.eval_tags: dict[str, str] = {}
        self.plots = Path(tempfile.mkdtemp(prefix="imm-plots-"))
        self.rows = self._logged_rows()  # the sample grid's rows, one per evaluation
        self.columns: list[str] = []
        self.held_rows = 0  # rows not sent yet

    def record(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        step = int(metrics["step"])
        if step <= self.logged_through:
            return
        ts = int(time.time() * 1000)
        shown = {k: shown_value(v) for k, v in metrics.items() if k != "step"}
        if shown.get(LR_KEY) == self.last_lr:  # a flat line of points says nothing: the learning rate when it changes
            shown.pop(LR_KEY)
        self.last_lr = shown.get(LR_KEY, self.last_lr)
        self.pending += [Metric(k, v, ts, step) for k, v in shown.items()]

    def on_eval(self, step: int, samples: dict, tags: dict[str, str] | None = None, reference=None) -> None:
        """A row of the sample grid (`sample_grids.evaluation_row`) and the evaluation's tags."""
        from orchestrator.track import sample_grids

        if tags and tags != self.eval_tags:  # which feature extractor the Frechet metrics use
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.eval_tags = tags
        if step <= self.logged_through:
            return
        self.columns, row = sample_grids.evaluation_row(step, samples, self.plots, reference)
        self.rows.append(row)
        self.held_rows += 1

    def stash(self, checkpoint_dir: str) -> None:
        """Write what is held into the checkpoint about to be saved: a worker that dies after saving it and before
        `commit` would lose those metrics, since the attempt that restores the checkpoint never computes them again
        (`recover` sends them)."""
        import json

        held = [[m.key, m.value, m.timestamp, m.step] for m in self.pending]
        (Path(checkpoint_dir) / PENDING_FILE).write_text(json.dumps(held))

    def recover(self, stashed: list) -> None:
        """Send the metrics a restored checkpoint covers that the run lacks (an attempt died before sending them)."""
        from mlflow.entities import Metric

        late = [Metric(k, v, ts, step) for k, v, ts, step in stashed if step > self.logged_through]
        if late:
            self.pending = late + self.pending
            self.commit()

    def check_writer(self) -> None:
        """Raise `Superseded` if a later attempt of the run claimed it."""
        holder = self.client.get_run(self.run_id).data.tags.get(WRITER_TAG)
        if holder != self.writer:
            raise Superseded(f"run {self.run_id} was taken over by a later attempt ({holder}); this one stops")

    def commit(self) -> None:
        """Send what is held: call once the checkpoint at the newest held step is saved."""
        from orchestrator.track import sample_grids

        self.check_writer()
        for i in range(0, len(self.pending), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + MAX_METRICS_PER_BATCH])
        if self.pending:
            self.logged_through = max(m.step for m in self.pending)
        self.pending = []
        if self.held_rows:
            grid = sample_grids.stack(self.columns, self.rows)
            self.client.log_artifact(self.run_id, str(sample_grids.save(grid, self.plots / SAMPLES_ARTIFACT)))
            self.held_rows = 0

    def _logged_rows(self) -> list:
        """The rows of the run's logged sample grid (a relaunch or restart continues it)."""
        from PIL import Image

        from orchestrator.track import sample_grids

        if SAMPLES_ARTIFACT not in {a.path for a in self.client.list_artifacts(self.run_id)}:
            return []
        path = self.client.download_artifacts(self.run_id, SAMPLES_ARTIFACT, str(self.plots))
        with Image.open(path) as grid:
            return sample_grids.rows_of(grid.copy())

    def close(self) -> None:
        shutil.rmtree(self.plots, ignore_errors=True)
