"""Architectures (G_theta), one module each registering itself (imm.networks.registry), and the preconditioning
that turns one into the one-step model f_{s,t}."""

from imm.networks.ddpmpp import DDPMpp
from imm.networks.dit import DiT
from imm.networks.mlp import MLP
from imm.networks.precond import PARAMETERIZATIONS, S_EMBEDDINGS, OneStepModel, VelocityModel
from imm.networks.registry import ARCHITECTURES, Architecture, register
from imm.networks.unet import UNet

__all__ = ["ARCHITECTURES", "Architecture", "DDPMpp", "DiT", "MLP", "OneStepModel", "PARAMETERIZATIONS",
           "S_EMBEDDINGS", "UNet", "VelocityModel", "register"]
