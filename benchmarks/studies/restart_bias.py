"""Why IMM's restart sampler rises at 8 steps on a uniform grid (issue 29): each re-noised step at a small time adds
the one-step map's own small bias, and restart applies one per step.

A restart step at time t is the Markov kernel K_t: x0 -> f_{eps_t, t}(alpha_t x0 + sigma_t sigma_d eps). The data
distribution is its fixed point for an exact model, so applying K_t n times to exact data draws measures what one step
adds. The script trains the shipped toy2d IMM on one 2D set (seed 0, about 80 s on one thread), prints the energy
distance to held-out points after n = 1..6 applications of K_t at several t, and the restart sampler's score at 2, 4
and 8 steps on each time grid: uniform; EDM's eta grid (its steps at large t, then near-identity steps at tiny t);
half_eta (toy2d's: a first step to T/2, then eta-spaced steps that re-noise little).

    .venv/bin/python -m benchmarks.studies.restart_bias [--set grid] [--seed 0]

It prints its tables and writes no file; docs/science/README.md quotes them.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.studies.common import quality, train_ema
from benchmarks.studies.suite2d import job_config

N = 4000
TIMES = (0.5, 0.25, 0.125, 0.0625)


def main(argv: list[str] | None = None) -> None:
    from omegaconf import OmegaConf

    from imm.data import load_data
    from imm.methods import build_model
    from imm.metrics import energy_distance
    from imm.sampling import SCHEDULES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="grid")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = job_config("imm", args.set, args.seed, n_heldout=N)
    state = train_ema(cfg)
    model = build_model(cfg, tuple(state["data_shape"]), state["sigma_d"])
    model.load_state_dict(state["ema"])
    model.eval()
    data = load_data(cfg.data)
    g = torch.Generator().manual_seed(0)
    sigma_d = float(state["sigma_d"])
    print(f"{args.set}, seed {args.seed}: energy distance after n applications of the restart step K_t to exact draws")
    print("t       " + " ".join(f"n={n:<6}" for n in range(1, 7)))
    for t in TIMES:
        x = data.train[torch.randint(len(data.train), (N,), generator=g)]
        tt = torch.full((N,), t)
        row = []
        for _ in range(6):
            x_t = model.traj.alpha(tt)[:, None] * x + model.traj.sigma(tt)[:, None] * sigma_d * torch.randn(
                x.shape, generator=g)
            with torch.no_grad():
                x = model(x_t, torch.full((N,), cfg.eps_t), tt)
            row.append(f"{energy_distance(x, data.heldout):.4f}")
        print(f"{t:<7} " + " ".join(f"{v:<8}" for v in row))
    print("restart sampler (2 noise seeds):  2 steps  4 steps  8 steps")
    for schedule in SCHEDULES:
        c = OmegaConf.merge(cfg, {"imm": {"schedule": schedule}})
        print(f"  {schedule:<31} " + "  ".join(f"{quality(model, c, 'restart', k, N, (2,), data.heldout):.4f}"
                                              for k in (2, 4, 8)))


if __name__ == "__main__":
    main()
