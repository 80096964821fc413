"""Each method is a model, a loss and its samplers behind one interface, selected by `method=`."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from imm.config import resolved_T
from imm.methods.flow_matching import FlowMatchingLoss
from imm.methods.imm import IMMLoss
from imm.networks import MLP, OneStepModel, VelocityModel
from imm.sampling import SAMPLERS, initial_noise, time_grid
from imm.trajectories import get_trajectory
from imm.weighting import Weighting

DEFAULT_SAMPLER = {"imm": "pushforward", "fm": "euler"}


def build_model(cfg: DictConfig, data_shape: tuple[int, ...], sigma_d: float) -> OneStepModel:
    m = cfg.model
    net = MLP(data_shape[-1], hidden=m.hidden, depth=m.depth, emb_dim=m.emb_dim, dropout=m.dropout)
    traj = get_trajectory(cfg.trajectory)
    if cfg.method == "fm":
        return VelocityModel(net, traj, sigma_d=sigma_d, s_embedding=m.s_embedding)
    return OneStepModel(net, traj, m.parameterization, sigma_d=sigma_d, s_embedding=m.s_embedding)


def build_loss(cfg: DictConfig):
    T = resolved_T(cfg)
    if cfg.method == "fm":
        return FlowMatchingLoss(eps_t=cfg.eps_t, T=T)
    c = cfg.imm
    return IMMLoss(
        get_trajectory(cfg.trajectory),
        group_size=c.group_size, kernel=c.kernel, mapping=c.mapping, k=c.k,
        weighting=Weighting(c.weighting, c.a, c.b, c.weight_elbo, c.weight_alpha, c.weight_norm),
        unbiased=c.estimator == "u", eps_t=cfg.eps_t, T=T, time_sampler=c.time_sampler,
        p_mean=c.p_mean, p_std=c.p_std, eta_max=c.eta_max, eta_min=c.eta_min, delta=c.delta,
    )


@torch.no_grad()
def generate(
    model: nn.Module,
    cfg: DictConfig,
    n: int,
    steps: int,
    *,
    sampler: str | None = None,
    seed: int = 0,
    data_shape: tuple[int, ...],
    batch_size: int = 10000,
) -> Tensor:
    """n samples in `steps` steps with the configured (or given) sampler, reproducible from `seed`."""
    sampler = sampler or cfg.sample.sampler or DEFAULT_SAMPLER[cfg.method]
    T = resolved_T(cfg)
    grid = time_grid(steps, model.traj, cfg.eps_t, T, cfg.sample.schedule, cfg.sample.times)
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = initial_noise(b, data_shape, model.sigma_d, model.traj, T, generator=g, device=device)
        out.append(SAMPLERS[sampler](model, x, grid, generator=g))
    model.train(was_training)
    return torch.cat(out)
