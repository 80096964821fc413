"""Sweeps: an Optuna study whose trials are Ray Train runs, tracked as nested MLflow runs.

    spec      the sweep file: its schema, loaded (`load_sweep`)
    validation  its checks, in full before anything starts (`validate_sweep`)
    space     the validated sweep: its swept keys as Optuna samples them (`Sweep`, `Param`)
    study     the Optuna study: storage, sampler and pruner, distinct proposals, resume checks
    lease     one driver per sweep at a time
    trials    a trial on Ray: resources, its task, what it returns, its checkpoints
    runner    the loop: ask -> launch -> wait (`SweepRunner`)
    outcomes  how a trial ends: its reports fed to the pruner, its result told to the study (`TrialOutcomes`)
    records   the MLflow parent and trial runs, told what happens
    progress  the terminal's lines and bar
    report    what a finished sweep leaves on its parent run; `imm-orch status`
    best      `imm-orch train --best-of`: the best trial's settings trained again
    naming    the tags, trial titles and view names the others share
"""
