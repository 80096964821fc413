"""train.init_from: the trained network a run starts from (fine-tuning, or a distilled flow map warm-started from its
teacher), loaded into the network and its EMA while the optimizer starts fresh.

What carries over is the network (`net`), not the model around it. The parent may be another method's model, a
flow-matching teacher starting a MeanFlow or TVM student say, when it is the same network read the same way: its
output parameterisation, s embedding, time input scale and sigma_d are this run's (a one-line ValueError names the
first that is not; a flow-matching network sees 1000 t, so its TVM student sets tvm.time_scale=1000).
"""

from __future__ import annotations

import torch
from torch import nn


def check_start(model: nn.Module, parent: nn.Module, what: str) -> None:
    """A one-line ValueError unless `parent`'s network can start `model`'s: the same reading (above) and exactly the
    same parameters and buffers, shape for shape."""
    if not hasattr(parent, "net"):
        raise ValueError(f"{what}: a {type(parent).__name__} has no network to start this run's from")
    for name, theirs, ours in (
        ("output parameterisation", getattr(parent, "parameterization", None), model.parameterization),
        ("model.s_embedding", getattr(parent, "s_embedding", None), model.s_embedding),
        ("time input scale", f"{float(parent.time_input_scale()):g}", f"{float(model.time_input_scale()):g}"),
        ("sigma_d", f"{float(parent.sigma_d):g}", f"{float(model.sigma_d):g}"),
    ):
        if theirs != ours:
            hint = " (set the method's time_scale to its value)" if name == "time input scale" else ""
            raise ValueError(f"{what}: its network's {name} is {theirs} and this run's {ours}{hint}")
    ours, weights = model.net.state_dict(), parent.net.state_dict()
    missing, extra = sorted(set(ours) - set(weights)), sorted(set(weights) - set(ours))
    shapes = [k for k in ours if k in weights and tuple(ours[k].shape) != tuple(weights[k].shape)]
    if missing or extra or shapes:
        first = shapes[0] if shapes else None
        detail = (f"net.{first}: {list(weights[first].shape)} there, {list(ours[first].shape)} here" if first else
                  f"{len(missing)} key(s) missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})")
        raise ValueError(f"{what}: its network does not fit this run's ({detail})")


@torch.no_grad()
def start_from(parent: nn.Module, *models: nn.Module, what: str) -> None:
    """Check (check_start), then copy `parent`'s network weights into each of `models` (the network and its EMA)."""
    for model in models:
        check_start(model, parent, what)
        model.net.load_state_dict(parent.net.state_dict())
