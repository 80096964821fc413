"""Infrastructure: where work runs and where it is kept, and what is checked before anything starts.

    cluster    which Ray a command runs on: an embedded local Ray, or a cluster (`connect`)
    submit     `imm-orch submit`: a sweep or a run as a Ray job
    fit        whether a trial's workers fit the cluster's nodes at all
    preflight  every check before Ray starts: data, weights, stores, S3, shared storage on a cluster
    storage    where a run keeps its things: the embedded default folder and Ray Train's storage
    processes  the child processes a command starts, stopped with it
    encode     `imm-orch encode`: images -> VAE latents as a Ray Data job
"""
