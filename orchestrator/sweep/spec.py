"""A sweep file: the run config to start from, the keys to search and how, what to optimise, and where.

Here: the file's schema and its loading, like run configs (an OmegaConf structured schema <- the YAML file <-
dotted overrides). The loaded file is checked in full before anything starts (`validation`: every swept key must be a
run-config key, every choice and both ends of every range must give a valid run config, conditions (`when`) must
name keys and values that can occur, the objective must be a metric the runs report, and the sampler/pruner must
suit the space and the objective count; a mistake is one ConfigError naming the field and what is allowed) and
becomes a `Sweep` of `Param`s (`space`).

    name: toy2d_smoke
    base: {config: toy2d, overrides: [train.steps=400]}
    space:
      imm.group_size: {choices: [2, 4, 8]}
      train.lr: {low: 3.0e-4, high: 3.0e-3, log: true}
      imm.b: {low: 2.0, high: 8.0, when: {imm.weighting: sigmoid}}
    objective: [{metric: energy/steps_1, direction: minimize}]
    sampler: {name: tpe, seed: 0}
    pruner: {name: asha}
    trials: 8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from imm.checks import omegaconf_message
from imm.config import ConfigError, load_yaml
from orchestrator.sweep.space import Param, Sweep
from orchestrator.sweep.validation import (
    DIRECTIONS,
    EVAL_ONLY,
    NAME_RE,
    OPTUNA_SAMPLERS,
    PARAM_TYPES,
    PRUNERS,
    UNSWEPT,
    validate_sweep,
)
from orchestrator.track.tracking import DEFAULT_EXPERIMENT

__all__ = ["load_sweep", "sweep_from_dict", "validate_sweep", "Sweep", "Param", "SweepSpec", "BaseSpec", "ParamSpec",
           "ObjectiveSpec", "SamplerSpec", "PrunerSpec", "ResourcesSpec", "OPTUNA_SAMPLERS", "PRUNERS", "DIRECTIONS",
           "PARAM_TYPES", "EVAL_ONLY", "UNSWEPT", "NAME_RE"]


@dataclass
class BaseSpec:
    config: str = "toy2d"  # a run config file or a built-in config name
    overrides: list[str] = field(default_factory=list)


@dataclass
class ParamSpec:
    choices: list[Any] | None = None  # categorical
    low: float | None = None  # int or float range (int when both ends are integers, unless `type` says)
    high: float | None = None
    type: str | None = None
    log: bool = False
    step: float | None = None
    when: dict[str, Any] = field(default_factory=dict)  # sample this key only where these keys have these values


@dataclass
class ObjectiveSpec:
    metric: str = MISSING
    direction: str = "minimize"


@dataclass
class SamplerSpec:
    name: str = "tpe"
    seed: int | None = 0
    startup_trials: int | None = None  # random trials before the model takes over (None: the sampler's default)


@dataclass
class PrunerSpec:
    name: str = "none"
    min_resource: int | None = None  # training steps before the first pruning decision (None: eval.every)
    reduction_factor: int = 3  # asha, hyperband
    startup_trials: int = 2  # median: finished trials before any trial is pruned


@dataclass
class ResourcesSpec:
    workers: int | None = None  # Ray Train workers per trial (None: the base config's trainer.num_workers)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # > 0 trains on GPUs; a fraction packs several trials on one GPU


@dataclass
class SweepSpec:
    name: str = MISSING  # names the study, the MLflow parent run and the trials' runs (`NAME-t0003`)
    base: BaseSpec = field(default_factory=BaseSpec)
    space: dict[str, ParamSpec] = field(default_factory=dict)
    objective: list[ObjectiveSpec] = field(default_factory=list)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    trials: int = 8
    max_concurrent: int | None = None  # None: as many as the cluster's resources hold
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # trials to run first, e.g. the paper's settings
    storage: str | None = None  # Optuna storage: None = journal file <storage.root>/optuna.journal; or an RDB URL
    experiment: str = DEFAULT_EXPERIMENT  # MLflow experiment of the parent and trial runs
    # A trained model (runs:/, models:/, a path or s3://) to evaluate instead of training: each trial samples it
    # with its sample.* / eval.* params (e.g. guidance scale) and logs the metrics. The model keeps its own config,
    # except for `base`'s eval.* settings (features, weights, reference, n_samples, steps, ...) and the params.
    model: str | None = None


def load_sweep(path: str | Path, base_overrides: list[str] | None = None) -> Sweep:
    """Load and validate a sweep file; `base_overrides` (`key=value`) go after the file's base overrides."""
    p = Path(path)
    if not p.is_file():
        shipped = Path(__file__).resolve().parents[2] / "sweeps"  # the checkout's sweeps/ (a name: toy2d_smoke)
        builtin = shipped / f"{path}.yaml"
        if not builtin.is_file():
            known = sorted(q.stem for q in shipped.glob("*.yaml"))
            raise ConfigError(f"sweep file {str(path)!r} not found" + (f" (sweeps/ holds {known})" if known else ""))
        p = builtin
    try:
        raw = OmegaConf.to_container(load_yaml(p), resolve=False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{p}: {omegaconf_message(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a sweep file is a mapping (name, base, space, objective, ...)")
    return sweep_from_dict(raw, base_overrides)


def sweep_from_dict(raw: dict[str, Any], base_overrides: list[str] | None = None) -> Sweep:
    raw = _shorthands(dict(raw))
    try:
        spec = OmegaConf.merge(OmegaConf.structured(SweepSpec), OmegaConf.create(raw))
        spec.base.overrides = [*spec.base.overrides, *(base_overrides or [])]
        OmegaConf.to_container(spec, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(omegaconf_message(e)) from None
    return validate_sweep(spec)


def _shorthands(raw: dict[str, Any]) -> dict[str, Any]:
    """`sampler: tpe`, `pruner: asha`, `objective: energy/steps_1` and a single objective mapping."""
    for key in ("sampler", "pruner"):
        if isinstance(raw.get(key), str):
            raw[key] = {"name": raw[key]}
    obj = raw.get("objective")
    if isinstance(obj, str):
        raw["objective"] = [{"metric": obj}]
    elif isinstance(obj, dict):
        raw["objective"] = [obj]
    return raw
