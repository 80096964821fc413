"""Where and how IMM runs happen: Ray Train workers, MLflow tracking, the `imm-orch` command line.

`imm/` holds the method and knows nothing of Ray or MLflow; this package holds no model logic.
cli (commands) -> cluster (which Ray) -> launch (one TorchTrainer run) -> worker (train_loop on each
rank) with tracking (the MLflow run, rank 0's logger) and storage (where checkpoints go).
"""


def load_model(uri: str, *, tracking_uri: str | None = None, device=None):
    """The model at `uri` (runs:/ID, models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint path or s3:// URI),
    ready to `.sample(n, steps, seed)`. See orchestrator.models."""
    from orchestrator.models import load_model as load

    return load(uri, tracking_uri=tracking_uri, device=device)


__all__ = ["load_model"]
