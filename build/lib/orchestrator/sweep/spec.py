"""A sweep file: the run config to start from, the keys to search and how, what to optimise, and where.

Loaded like run configs (an OmegaConf structured schema <- the YAML file <- dotted overrides) and checked
in full before anything starts: every swept key must be a run-config key, every choice and both ends of
every range must give a valid run config, conditions (`when`) must name keys and values that can occur,
the objective must be a metric the runs report, and the sampler/pruner must suit the space and the
objective count. A mistake is one ConfigError naming the field and what is allowed.

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

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from imm.config import ConfigError, _omegaconf_message, config_from_dict, load_config, load_yaml
from imm.metrics.evaluator import metric_names

SAMPLERS = ("tpe", "gp", "cmaes", "random", "grid")
EVAL_ONLY = ("sample.", "eval.")  # what a sweep of a trained model may search
PRUNERS = ("none", "asha", "hyperband", "median")
DIRECTIONS = ("minimize", "maximize")
PARAM_TYPES = ("int", "float")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
UNSWEPT = ("storage.", "trainer.")  # placement and storage: set by the sweep (`resources`), not searched


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
    experiment: str = "imm"  # MLflow experiment of the parent and trial runs
    # A trained model (runs:/, models:/, a path or s3://) to evaluate instead of training: each trial samples it
    # with its sample.* / eval.* params (e.g. guidance scale) and logs the metrics. The model keeps its own config,
    # except for `base`'s eval.* settings (features, weights, reference, n_samples, steps, ...) and the params.
    model: str | None = None


@dataclass(frozen=True)
class Param:
    """One swept key, in the form Optuna samples it."""

    key: str
    kind: str  # categorical, int, float
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: tuple[tuple[str, Any], ...] = ()

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def edges(self) -> list[Any]:
        """The values to validate against the run config: every choice, or both ends of the range."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and value != int(value):
            return False
        return self.low <= value <= self.high

    def grid(self) -> list[Any] | None:
        """Every value this key can take, or None for a continuous range."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step:
            n = int(round((self.high - self.low) / self.step))
            return [self.low + i * self.step for i in range(n + 1)]
        return None

    def describe(self) -> str:
        if self.kind == "categorical":
            body = f"one of {list(self.choices)}"
        else:
            body = f"{self.kind} in [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")
            body += f" step {self.step:g}" if self.step else ""
        cond = " and ".join(f"{k}={v}" for k, v in self.when)
        return f"{self.key}: {body}" + (f" (when {cond})" if cond else "")


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the spec as loaded, the base run config (resources applied) and the params in order."""

    spec: DictConfig
    base: DictConfig
    params: tuple[Param, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.spec.objective]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.spec.objective]

    def suggest(self, trial) -> dict[str, Any]:
        """Sample the trial's params define-by-run: a conditional key only where its conditions hold."""
        values: dict[str, Any] = {}
        for p in self.params:
            if self._applies(p, values):
                values[p.key] = p.suggest(trial)
        return values

    def points(self, limit: int = 100_000) -> list[dict[str, Any]] | None:
        """Every parameter set the space holds (conditional keys only where they apply), or None when it is
        continuous or has more than `limit` points."""
        points: list[dict[str, Any]] = [{}]
        for p in self.params:
            values = p.grid()
            grown: list[dict[str, Any]] = []
            for pt in points:
                if not self._applies(p, pt):
                    grown.append(pt)
                elif values is None:
                    return None
                else:
                    grown += [{**pt, p.key: v} for v in values]
            points = grown
            if len(points) > limit:
                return None
        return points

    def _applies(self, p: Param, values: dict[str, Any]) -> bool:
        return all(_same(values.get(k, OmegaConf.select(self.base, k)), v) for k, v in p.when)

    def trial_config(self, params: dict[str, Any]) -> DictConfig:
        """The base run config with the trial's params set, validated."""
        return _apply(self.base, params)

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.spec)


def load_sweep(path: str | Path, base_overrides: list[str] | None = None) -> Sweep:
    """Load and validate a sweep file; `base_overrides` (`key=value`) go after the file's base overrides."""
    p = Path(path)
    if not p.is_file():
        builtin = Path(__file__).resolve().parent.parent / "sweeps" / f"{path}.yaml"
        if not builtin.is_file():
            raise ConfigError(f"sweep file {str(path)!r} not found")
        p = builtin
    try:
        raw = OmegaConf.to_container(load_yaml(p), resolve=False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{p}: {_omegaconf_message(e)}") from None
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
        raise ConfigError(_omegaconf_message(e)) from None
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


def validate_sweep(spec: DictConfig) -> Sweep:
    if not NAME_RE.match(spec.name):
        raise ConfigError(f"name: {spec.name!r} must be 1-100 of letters, digits, '.', '_', '-' (it names runs)")
    _choice("sampler.name", spec.sampler.name, SAMPLERS)
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
            if not _same(OmegaConf.select(base, k), v):
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


def _apply(base: DictConfig, values: dict[str, Any]) -> DictConfig:
    cfg = OmegaConf.to_container(base, resolve=True)
    for key, value in values.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config_from_dict(cfg)


def _check_edges(sweep: Sweep) -> None:
    """Every choice and both range ends (with the conditions that make the key apply) give a valid run config."""
    for p in sweep.params:
        for value in p.edges():
            try:
                _apply(sweep.base, {**dict(p.when), p.key: value})
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


def _same(a: Any, b: Any) -> bool:
    """Equal as config values (1 == 1.0, but True != 1)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _choice(field_: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field_}: {value!r} is not one of {list(allowed)}")


def _at_least(field_: str, value: Any, low: int) -> None:
    if value < low:
        raise ConfigError(f"{field_}: {value!r} is out of range (allowed: >= {low})")
