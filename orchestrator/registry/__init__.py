"""Models: a trained model found by URI and loaded, written as an MLflow model, and promoted in the registry.

    models    `load_model(uri)` for runs:/, models:/, paths and s3:// URIs; `save_mlflow_model`; the checks of
              train.init_from and train.teacher
    promote   the best finished run -> a registered model version -> an alias (`imm-orch promote`)
"""
