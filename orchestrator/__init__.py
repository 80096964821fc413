"""Where and how IMM runs happen: Ray Train workers, MLflow tracking, the `imm-orch` command line.

`imm/` holds the method and knows nothing of Ray or MLflow; this package holds no model logic.
cli (commands) -> cluster (which Ray) -> launch (one TorchTrainer run) -> worker (train_loop on each
rank) with tracking (the MLflow run, rank 0's logger) and storage (where checkpoints go).
"""
