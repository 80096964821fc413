-- The Optuna study database beside MLflow's (their tables must not share a schema: both use alembic_version).
CREATE DATABASE optuna OWNER imm;
