"""A sweep's best trial trained again (`imm-orch train --best-of SWEEP.yaml train.steps=N`).

A sweep ranks settings on a short budget; the researcher then trains the winner for longer. The run takes the
sweep's base config, the best complete trial's swept values and the command's overrides, and is tracked as the
sweep's champion: nested under its parent run, tagged with the sweep (so `imm-orch promote --sweep` weighs it
with the trials) and named after the trial it repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from imm.config import ConfigError


@dataclass(frozen=True)
class Champion:
    name: str  # the Ray run's name (the same command resumes it)
    experiment: str
    title: str  # the MLflow run's display name
    tags: dict[str, str] = field(default_factory=dict)


def best_of(path: str, overrides: list[str],
            tracking_uri: str | None = None) -> tuple[DictConfig, tuple[str, ...], Champion]:
    """(run config, its swept keys, how to track it) for the best complete trial of the sweep in `path`."""
    import optuna

    from orchestrator.sweep.naming import ROLE_TAG, SWEEP_ID_TAG, SWEEP_TAG, swept_values
    from orchestrator.sweep.spec import load_sweep
    from orchestrator.sweep.study import open_storage, redact, storage_url
    from orchestrator.track import tracking

    sweep = load_sweep(path, base_overrides=overrides)
    url = storage_url(sweep)
    try:
        study = optuna.load_study(study_name=sweep.name, storage=open_storage(url))
    except KeyError:
        raise ConfigError(f"--best-of: no sweep {sweep.name!r} in {redact(url)}; run it first") from None
    if len(study.directions) > 1:
        raise ConfigError(f"--best-of: sweep {sweep.name!r} has several objectives, so no single best trial")
    if not study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
        raise ConfigError(f"--best-of: sweep {sweep.name!r} has no complete trial yet")
    best = study.best_trial
    cfg = sweep.trial_config(best.params)
    sweep_id = study.user_attrs["sweep_id"]
    tags = {SWEEP_TAG: sweep.name, SWEEP_ID_TAG: sweep_id, ROLE_TAG: "champion", "imm.champion.of_trial": str(best.number)}
    trial_run = best.user_attrs.get("mlflow_run_id")
    if trial_run:
        mlc = tracking.client(tracking.tracking_uri(cfg, tracking_uri))
        parent = mlc.get_run(trial_run).data.tags.get("mlflow.parentRunId")
        if parent:
            tags["mlflow.parentRunId"] = parent
    title = f"best of t{best.number}: {swept_values(best.params)}, {cfg.train.steps} steps"
    return cfg, tuple(best.params), Champion(name=f"{sweep.name}-{sweep_id}-best", experiment=sweep.spec.experiment,
                                             title=title, tags=tags)
