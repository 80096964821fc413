"""train.init_from: the trained network a run starts from (fine-tuning, or a distilled flow map warm-started from its
teacher), loaded into the network and its EMA while the optimizer starts fresh.

What carries over is the network (`net`; a VAE's whole model), not the model around it. The parent may be another
method's model, a flow-matching teacher starting a MeanFlow or TVM student say, when it is the same network read the
same way: its output parameterisation, s embedding, time input scale and sigma_d are this run's (a one-line ValueError
names the first that is not; a flow-matching network sees 1000 t, so its TVM student sets tvm.time_scale=1000).
"""

from __future__ import annotations

import torch
from torch import nn


def reading(model: nn.Module) -> dict[str, str | None]:
    """How a model reads its network's inputs and output (None where it has no such notion: a VAE, DDPM's)."""
    scale = getattr(model, "time_input_scale", None)
    sigma_d = getattr(model, "sigma_d", None)
    return {"output parameterisation": getattr(model, "parameterization", None),
            "model.s_embedding": getattr(model, "s_embedding", None),
            "time input scale": None if scale is None else f"{float(scale()):g}",
            "sigma_d": None if sigma_d is None else f"{float(sigma_d):g}"}


def network(model: nn.Module) -> nn.Module:
    """What carries over: the network `net`, or the whole model where it has none (a VAE)."""
    return getattr(model, "net", model)


def check_start(model: nn.Module, parent: nn.Module, what: str) -> None:
    """A one-line ValueError unless `parent`'s network can start `model`'s: the same reading and exactly the same
    parameters and buffers, shape for shape."""
    theirs_all, ours_all = reading(parent), reading(model)
    for name, ours in ours_all.items():
        if theirs_all[name] != ours:
            hint = " (set the method's time_scale to its value)" if name == "time input scale" else ""
            raise ValueError(f"{what}: its network's {name} is {theirs_all[name]} and this run's {ours}{hint}")
    ours, weights = network(model).state_dict(), network(parent).state_dict()
    missing, extra = sorted(set(ours) - set(weights)), sorted(set(weights) - set(ours))
    shapes = [k for k in ours if k in weights and tuple(ours[k].shape) != tuple(weights[k].shape)]
    if missing or extra or shapes:
        first = shapes[0] if shapes else None
        detail = (f"{first}: {list(weights[first].shape)} there, {list(ours[first].shape)} here" if first else
                  f"{len(missing)} key(s) missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})")
        raise ValueError(f"{what}: its network does not fit this run's ({detail})")


@torch.no_grad()
def start_from(parent: nn.Module, model: nn.Module, *copies: nn.Module, what: str) -> None:
    """Check (check_start), then copy `parent`'s network weights into `model` and its `copies` (its EMA), which are
    built as it is and so need no check of their own."""
    check_start(model, parent, what)
    weights = network(parent).state_dict()
    for m in (model, *copies):
        network(m).load_state_dict(weights)
