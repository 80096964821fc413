"""The consistency model as the paper's special case of IMM (lemma 1): M = 1, the energy kernel, and every group
mapped to s = eps_t. It reads the `imm` section (mapping, k, weighting, ...) and samples with restart, the usual
multistep CM sampler (it only learns maps to eps_t)."""

from __future__ import annotations

from imm.methods import imm
from imm.methods.registry import Method, register

METHOD = register(Method(
    "cm", "consistency model: IMM with M = 1, the energy kernel and s = eps_t",
    model_kind="one_step_map", default_sampler="restart", build_model=imm.build_model,
    build_loss=lambda cfg: imm.build_loss(cfg, consistency=True),
    check_run=imm.resolved_delta,
))
