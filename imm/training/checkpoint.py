"""Reading a training checkpoint: the one file format every run writes (imm.training.loop), resumes from and that
trained models, teachers and `train.init_from` are read from; loaded weights_only, so nothing in it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"


def load_checkpoint(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """A checkpoint dict from a checkpoint.pt file or a folder holding one (weights_only: no pickled code)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {path!r} (expected {CHECKPOINT_FILE} or a folder holding it)")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated (EOFError, zip errors), not a torch file (UnpicklingError), foreign objects
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{p} is not a readable checkpoint, perhaps truncated or corrupt: {first[:200]}") from None
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{p} is not a checkpoint of this project (a dict with its run config)")
    return state
