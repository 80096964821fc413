"""Architectures (G_theta), one module each registering itself (imm.networks.registry), and the preconditioning
that turns one into the one-step model f_{s,t}. Every module in this folder is imported here, so adding a network is
adding a file: it calls `register(Architecture(...))` and reads its own section model.<name>."""

import importlib
import pkgutil

from imm.networks.precond import PARAMETERIZATIONS, S_EMBEDDINGS, OneStepModel, VelocityModel
from imm.networks.registry import ARCHITECTURES, Architecture, register

# The built-in networks in the order errors and help list them, then any other module in this folder.
_BUILTIN = ("mlp", "unet", "ddpmpp", "dit")
for _name in (*_BUILTIN, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    if _name not in ("registry", "precond", "official"):
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["ARCHITECTURES", "Architecture", "OneStepModel", "PARAMETERIZATIONS", "S_EMBEDDINGS", "VelocityModel",
           "register"]
