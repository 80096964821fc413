"""The errors and checks every floor of imm/ may use: a ConfigError that names the key and what is allowed, the
range and choice checks that write it, and the values a config resolves to before any worker starts (T, the
precision). The schema these checks serve is assembled on top, in imm.config."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A user mistake in a config: the message names the key and what is allowed."""


def value_of(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def check_choice(cfg: DictConfig, key: str, allowed) -> None:
    value = value_of(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")


def check_range(cfg, key: str, low, high, strict_low: bool = False) -> None:
    """`cfg` a config (key dotted) or a plain mapping of values by key."""
    v = cfg[key] if isinstance(cfg, dict) else value_of(cfg, key)
    check_value(key, v, low, high, strict_low)


def check_value(key: str, v, low, high, strict_low: bool = False) -> None:
    """One home for range messages: `key: v is out of range (allowed: >= low and <= high)`."""
    too_low = v <= low if strict_low else v < low
    if too_low or (high is not None and v > high):
        bound = f"> {low}" if strict_low else f">= {low}"
        allowed = f"{bound} and <= {high}" if high is not None else bound
        raise ConfigError(f"{key}: {v!r} is out of range (allowed: {allowed})")


def omegaconf_message(e: OmegaConfBaseException) -> str:
    """OmegaConf's error as one line that starts with the key."""
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    return f"{key}: {msg}" if key else msg


def planned_precision(cfg: DictConfig) -> str:
    """The precision a run will train in, known before any worker starts: `auto` is bf16 where the trainer asks for
    GPUs (trainer.use_gpu). A run started by hand on a GPU resolves `auto` on its device
    (imm.training.accelerate.resolve_precision)."""
    p = cfg.train.precision
    return ("bf16" if cfg.trainer.use_gpu else "fp32") if p == "auto" else p
