"""Where and how IMM runs happen: Ray Train workers, MLflow tracking, Optuna sweeps, the `imm-orch` command line.

`imm/` holds the method and knows nothing of Ray or MLflow; this package holds no model logic.

    cli.py, terminal.py   the `imm-orch` program (its error policy, its log file) and what it shows on the terminal
    commands/   the table of `imm-orch` commands, one module each
    run/        one training run on Ray: its plan and launch, the workers, a one-process run, progress; evaluations
    track/      MLflow: the driver's client (tracking URI, runs, tags), rank 0's writer, provenance, sample grids
    registry/   trained models by URI, saved as MLflow models, promoted in the registry
    infra/      which Ray (embedded or a cluster), Ray jobs, the checks before start, storage, child processes
    sweep/      Optuna sweeps whose trials are runs

cli (commands) -> infra.cluster (which Ray) -> run.launch (one TorchTrainer run) -> run.worker (train_loop on each
rank) with track.tracking (the MLflow run), track.rank_zero (rank 0's writer) and infra.storage (where checkpoints go).
"""

from __future__ import annotations

from imm import moved


def load_model(uri: str, *, tracking_uri: str | None = None, device=None):
    """The model at `uri` (runs:/ID, models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint path or s3:// URI),
    ready to `.sample(n, steps, seed)`. See orchestrator.registry.models."""
    from orchestrator.registry.models import load_model as load

    return load(uri, tracking_uri=tracking_uri, device=device)


__all__ = ["load_model"]

# Where modules moved when orchestrator/ was grouped into rooms. Each old name imports the module that
# lives at the new path, so old scripts and Ray job entrypoints, and anything pickled by module path, keep loading.
MOVED = {
    "orchestrator.launch": "orchestrator.run.launch",
    "orchestrator.worker": "orchestrator.run.worker",
    "orchestrator.in_process": "orchestrator.run.in_process",
    "orchestrator.checkpoints": "orchestrator.run.checkpoints",
    "orchestrator.board": "orchestrator.run.board",
    "orchestrator.progress": "orchestrator.run.printer",
    "orchestrator.evaluation": "orchestrator.run.evaluation",
    "orchestrator.tracking": "orchestrator.track.tracking",  # its RankZeroLogger, Superseded: track.rank_zero
    "orchestrator.provenance": "orchestrator.track.provenance",
    "orchestrator.sample_grids": "orchestrator.track.sample_grids",
    "orchestrator.run_record": "orchestrator.track.run_record",
    "orchestrator.links": "orchestrator.track.links",
    "orchestrator.models": "orchestrator.registry.models",
    "orchestrator.promote": "orchestrator.registry.promote",
    "orchestrator.cluster": "orchestrator.infra.cluster",
    "orchestrator.submit": "orchestrator.infra.submit",
    "orchestrator.preflight": "orchestrator.infra.preflight",
    "orchestrator.storage": "orchestrator.infra.storage",
    "orchestrator.fit": "orchestrator.infra.fit",
    "orchestrator.processes": "orchestrator.infra.processes",
    "orchestrator.encode": "orchestrator.infra.encode",
}


moved(MOVED)
