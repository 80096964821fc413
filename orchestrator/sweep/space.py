"""A validated sweep's search space: each swept key as Optuna samples it (`Param`), and the sweep they make up
(`Sweep`: its params in order, the base run config, and a trial's config from its values)."""

from __future__ import annotations

import copy
import functools
import pickle
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from imm.checks import ConfigError, omegaconf_message
from imm.config import validate


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
            return any(same_value(value, c) for c in self.choices)
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
        return all(same_value(values.get(k, OmegaConf.select(self.base, k)), v) for k, v in p.when)

    def trial_config(self, params: dict[str, Any]) -> DictConfig:
        """The base run config with the trial's params set, validated."""
        return apply_values(self._resolved_base, params)

    @functools.cached_property
    def _resolved_base(self) -> bytes:
        return resolved(self.base)

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.spec)


def resolved(base: DictConfig) -> bytes:
    """`base` with its interpolations resolved (they keep the base's values, as in a config stored for a run),
    pickled: `apply_values` unpickles a trial's config from it in 0.5 ms, where a deepcopy and a resolve take 3.5 (a
    sweep's driver makes one per trial). The bytes are this process's own, never a file's."""
    cfg = copy.deepcopy(base)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(omegaconf_message(e)) from None
    return pickle.dumps(cfg)


def apply_values(base: bytes, values: dict[str, Any]) -> DictConfig:
    """The run config `resolved` made `base` of, with `values` set at their dotted keys, validated. Set in a copy of
    the typed config (each value checked by its field's type): building the config again from the schema costs a
    driver tens of milliseconds per trial."""
    cfg = pickle.loads(base)
    try:
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=False)
    except OmegaConfBaseException as e:
        raise ConfigError(omegaconf_message(e)) from None
    validate(cfg)
    return cfg


def same_value(a: Any, b: Any) -> bool:
    """Equal as config values (1 == 1.0, but True != 1)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b
