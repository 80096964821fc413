"""A run: one training run on Ray, from its plan to its closed MLflow run, and an evaluation of a trained model.

    launch       the run's plan (name, storage, tracking, resources; `plan_run`) and its launch (`launch`)
    worker       what every Ray Train worker runs: imm's training loop wired to its session and MLflow
    in_process   a one-worker run trained in the calling process (a sweep's trial, in its own Ray task)
    checkpoints  the checkpoints such a run keeps itself, where Ray Train would keep them
    board        the progress board: the Ray actor rank 0 pushes its reports to
    printer      the driver's side of it: the progress bar or lines, and the line when workers restart
    evaluation   `imm-orch eval`: a model's metrics, logged as an MLflow run of its own
"""
