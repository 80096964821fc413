"""How a sweep names what it leaves in MLflow: the tags that tie runs to their sweep and trial, the trials'
display names and the shared view of the sweep's trials table."""

from __future__ import annotations

from typing import Any

SWEEP_TAG, SWEEP_ID_TAG, ROLE_TAG = "imm.sweep", "imm.sweep.id", "imm.sweep.role"
TRIAL_TAG, STATE_TAG, ERROR_TAG = "imm.trial.number", "imm.trial.state", "imm.trial.error"
SWEEP_ERROR_TAG = "imm.sweep.error"  # on the parent run: why the sweep stopped


def view_key(name: str, sweep_id: str) -> str:
    return f"{name}-{sweep_id}"


def trial_title(number: int, params: dict[str, Any], note: str = "") -> str:
    """A trial's name in MLflow's runs table: its number first (the table cuts long names), then its swept values
    (`t3 group_size=8 kernel=laplace k=10`)."""
    return f"t{number} {swept_values(params)}{note}"[:250]


def swept_values(params: dict[str, Any]) -> str:
    """`group_size=8 kernel=laplace k=10`: swept values by the last part of their key."""
    return " ".join(f"{k.rsplit('.', 1)[-1]}={fmt(v)}" for k, v in params.items())


def params_line(params: dict[str, Any]) -> str:
    """`imm.group_size=8 imm.kernel=laplace`: a trial's values by their full key, for the terminal."""
    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())


def fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
