"""Tracking: what runs leave in MLflow, and how the driver and the workers write it.

    tracking     the driver's MLflow client: the tracking URI, experiments, runs opened, found again and closed,
                 their params and tags, shared views
    rank_zero    the worker's writer: rank 0's metrics and sample grid, held until a checkpoint covers them
    provenance   what a run was made with (commit, versions, data set, parent and teacher models) and system metrics
    sample_grids the sample grids MLflow's pages show (a run's `samples.png`, a sweep's `sweep_samples.png`)
    run_record   which MLflow run a run's checkpoints belong to, so a run continues only in the store that holds it
    links        the deep links into the MLflow UI that `imm-orch ui` prints
"""
