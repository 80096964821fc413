"""The checks of a sweep file, in full before anything starts (`validate_sweep`): every swept key is a run-config
key, every choice and both ends of every range give a valid run config, conditions (`when`) name keys and values that
can occur, the objective is a metric the runs report, and the sampler and pruner suit the space and the objective
count. A mistake is one ConfigError naming the field and what is allowed."""

from __future__ import annotations

import difflib
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imm.checks import check_value
from imm.config import ConfigError, load_config
from imm.metrics.evaluator import metric_names
from orchestrator.sweep.space import Param, Sweep, same_value

OPTUNA_SAMPLERS = ("tpe", "gp", "cmaes", "random", "grid")
EVAL_ONLY = ("sample.", "eval.")  # what a sweep of a trained model may search
PRUNERS = ("none", "asha", "hyperband", "median")
DIRECTIONS = ("minimize", "maximize")
PARAM_TYPES = ("int", "float")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
UNSWEPT = ("storage.", "trainer.")  # placement and storage: set by the sweep (`resources`), not searched


def validate_sweep(spec: DictConfig) -> Sweep:
    if not NAME_RE.match(spec.name):
        raise ConfigError(f"name: {spec.name!r} must be 1-100 of letters, digits, '.', '_', '-' (it names runs)")
    _choice("sampler.name", spec.sampler.name, OPTUNA_SAMPLERS)
    _choice("pruner.name", spec.pruner.name, PRUNERS)
    _at_least("trials", spec.trials, 1)
    if spec.max_concurrent is not None:
        _at_least("max_concurrent", spec.max_concurrent, 1)
    if not spec.experiment:
        raise ConfigError("experiment: must name an MLflow experiment")

    base = _base_config(spec)
    params = tuple(_param(key, p, base, i, spec.space) for i, (key, p) in enumerate(spec.space.items()))
    if not params:
        raise ConfigError("space: empty; name at least one run-config key to search, e.g. imm.group_size: {choices: [2, 4]}")
    if spec.model:
        trained = [p.key for p in params if not p.key.startswith(EVAL_ONLY)]
        if trained:
            raise ConfigError(f"space.{trained[0]}: a sweep of a trained model (model: {spec.model}) searches only "
                              f"{', '.join(k + '*' for k in EVAL_ONLY)} keys; training keys need a sweep without `model`")
        if spec.pruner.name != "none":
            raise ConfigError(f"pruner.name: {spec.pruner.name!r} prunes training; a sweep of a trained model has no "
                              "intermediate reports (set pruner: none)")
    sweep = Sweep(spec=spec, base=base, params=params)
    _check_edges(sweep)
    _check_objective(sweep)
    _check_sampler(sweep)
    _check_pruner(sweep)
    _check_enqueue(sweep)
    return sweep


def _base_config(spec: DictConfig) -> DictConfig:
    r = spec.resources
    overrides = list(spec.base.overrides)
    if spec.model:  # an evaluation runs in one task
        overrides.append("trainer.num_workers=1")
    if r.workers is not None:
        _at_least("resources.workers", r.workers, 1)
        overrides.append(f"trainer.num_workers={r.workers}")
    if r.cpus_per_worker < 0 or r.gpus_per_worker < 0:
        raise ConfigError("resources: cpus_per_worker and gpus_per_worker must be >= 0")
    overrides.append(f"trainer.cpus_per_worker={r.cpus_per_worker}")
    if r.gpus_per_worker > 0:
        overrides += ["trainer.use_gpu=true", f"trainer.gpus_per_worker={r.gpus_per_worker}"]
    try:
        return load_config(spec.base.config, overrides)
    except ConfigError as e:
        raise ConfigError(f"base: {e}") from None


def _param(key: str, p: DictConfig, base: DictConfig, index: int, space: DictConfig) -> Param:
    field_ = f"space.{key}"
    _config_key(field_, key, base)
    if key == "name" or key.startswith(UNSWEPT):
        raise ConfigError(f"{field_}: {key.split('.')[0]} keys are set by the sweep (use `resources`), not searched")
    when = tuple((k, v) for k, v in (p.when or {}).items())
    earlier = list(space.keys())[:index]
    for k, v in when:
        _config_key(f"{field_}.when.{k}", k, base)
        later = list(space.keys()).index(k) if k in space else -1
        if later > index:
            raise ConfigError(f"{field_}.when: {k!r} is swept after {key!r}; list it before the keys that depend on it")
        if k not in earlier:  # a fixed key: the condition is constant, so it is certainly a mistake if false
            if not same_value(OmegaConf.select(base, k), v):
                raise ConfigError(f"{field_}.when: {k}={v!r} never holds: the base config has {k}="
                                  f"{OmegaConf.select(base, k)!r} and {k} is not swept")
    if p.choices is not None:
        if p.low is not None or p.high is not None or p.type is not None:
            raise ConfigError(f"{field_}: give either choices or low/high, not both")
        choices = tuple(OmegaConf.to_container(OmegaConf.create({"c": p.choices}))["c"])
        if not choices:
            raise ConfigError(f"{field_}.choices: empty")
        bad = [c for c in choices if not (c is None or isinstance(c, bool | int | float | str))]
        if bad:
            raise ConfigError(f"{field_}.choices: values must be numbers, strings, booleans or null, got {bad[0]!r}")
        if len({repr(c) for c in choices}) != len(choices):
            raise ConfigError(f"{field_}.choices: {list(choices)} has repeated values")
        return Param(key, "categorical", choices=choices, when=when)
    if p.low is None or p.high is None:
        raise ConfigError(f"{field_}: give choices: [...] or a range low: ..., high: ...")
    kind = p.type or ("int" if float(p.low).is_integer() and float(p.high).is_integer()
                      and isinstance(OmegaConf.select(base, key), int) else "float")
    _choice(f"{field_}.type", kind, PARAM_TYPES)
    low, high = float(p.low), float(p.high)
    if not low < high:
        raise ConfigError(f"{field_}: need low < high, got low={p.low}, high={p.high}")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{field_}: an int range needs integer low and high, got {p.low}, {p.high}")
    if p.log and low <= 0:
        raise ConfigError(f"{field_}.log: a log range needs low > 0, got {p.low}")
    if p.step is not None:
        if p.step <= 0:
            raise ConfigError(f"{field_}.step: must be > 0, got {p.step}")
        if p.log and not (kind == "int" and p.step == 1):
            raise ConfigError(f"{field_}: Optuna cannot combine log with step (except int step 1)")
    return Param(key, kind, low=low, high=high, log=bool(p.log), step=p.step, when=when)


def _config_key(field_: str, key: str, base: DictConfig) -> None:
    value = OmegaConf.select(base, key, default=_ABSENT)
    if value is _ABSENT or isinstance(value, DictConfig):
        leaves = list(_leaf_keys(base))
        near = difflib.get_close_matches(key, leaves, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f" (keys: {', '.join(leaves)})"
        raise ConfigError(f"{field_}: {key!r} is not a run-config key{hint}")


_ABSENT = object()


def _leaf_keys(cfg: DictConfig, prefix: str = ""):
    for k in cfg.keys():
        v = cfg._get_node(k)
        if isinstance(v, DictConfig):
            yield from _leaf_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _check_edges(sweep: Sweep) -> None:
    """Every choice and both range ends (with the conditions that make the key apply) give a valid run config."""
    for p in sweep.params:
        for value in p.edges():
            try:
                sweep.trial_config({**dict(p.when), p.key: value})
            except ConfigError as e:
                raise ConfigError(f"space.{p.key}: the value {value!r} gives an invalid run: {e}") from None


def _check_objective(sweep: Sweep) -> None:
    objective = sweep.spec.objective
    if not objective:
        raise ConfigError("objective: name a metric to optimise, e.g. objective: [{metric: energy/steps_1}]")
    swept_steps = next((p for p in sweep.params if p.key == "eval.steps"), None)
    configs = [sweep.base] if swept_steps is None else [sweep.trial_config({"eval.steps": v}) for v in swept_steps.edges()]
    for i, o in enumerate(objective):
        _choice(f"objective[{i}].direction", o.direction, DIRECTIONS)
        for cfg in configs:
            allowed = metric_names(cfg)
            if o.metric not in allowed:
                raise ConfigError(f"objective[{i}].metric: {o.metric!r} is not reported by these runs; "
                                  f"choose one of {allowed} (eval.steps sets the step counts)")
    if len(set(sweep.metrics)) != len(sweep.metrics):
        raise ConfigError(f"objective: {sweep.metrics} names a metric twice")


def _check_sampler(sweep: Sweep) -> None:
    s = sweep.spec.sampler
    if s.startup_trials is not None:
        _at_least("sampler.startup_trials", s.startup_trials, 0)
    if s.name == "cmaes":
        if len(sweep.metrics) > 1:
            raise ConfigError("sampler.name: cmaes optimises one objective; use tpe, gp or random for several")
        for p in sweep.params:
            if p.kind == "categorical" or p.when:
                raise ConfigError(f"sampler.name: cmaes searches unconditional int/float ranges only, and space.{p.key} "
                                  "is categorical or conditional; use tpe or gp")
    if s.name == "grid":
        for p in sweep.params:
            if p.when:
                raise ConfigError(f"sampler.name: grid cannot search conditional keys (space.{p.key}.when); "
                                  "use tpe or random, or split the sweep")
            if p.grid() is None:
                raise ConfigError(f"sampler.name: grid needs finite keys; give space.{p.key} choices or a step")


def _check_pruner(sweep: Sweep) -> None:
    pr = sweep.spec.pruner
    if pr.name == "none":
        return
    if len(sweep.metrics) > 1:
        raise ConfigError(f"pruner.name: {pr.name!r} needs a single objective (Optuna does not prune multi-objective "
                          "studies); set pruner: none or keep one objective")
    if pr.min_resource is not None:
        _at_least("pruner.min_resource", pr.min_resource, 1)
    _at_least("pruner.reduction_factor", pr.reduction_factor, 2)
    _at_least("pruner.startup_trials", pr.startup_trials, 0)


def _check_enqueue(sweep: Sweep) -> None:
    by_key = {p.key: p for p in sweep.params}
    for i, entry in enumerate(sweep.spec.enqueue):
        for key, value in entry.items():
            if key not in by_key:
                raise ConfigError(f"enqueue[{i}]: {key!r} is not a swept key (swept: {list(by_key)})")
            if not by_key[key].contains(value):
                raise ConfigError(f"enqueue[{i}].{key}: {value!r} is outside {by_key[key].describe()}")
        try:
            sweep.trial_config(dict(entry))
        except ConfigError as e:
            raise ConfigError(f"enqueue[{i}]: gives an invalid run: {e}") from None


def _choice(field_: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field_}: {value!r} is not one of {list(allowed)}")


def _at_least(field_: str, value: Any, low: int) -> None:
    check_value(field_, value, low, None)

