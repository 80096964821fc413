"""Shortcut models: the self-consistency target of an exact flow is its own big step, and two half steps
of the model make the target."""

import torch

from imm.config import load_config
from imm.maths.trajectories import get_trajectory
from imm.methods.meanflow import AverageVelocityModel
from imm.methods.shortcut import ShortcutConfig, ShortcutLoss
from imm.networks.mlp import MLP


def _exact_u(a: float, s: float):
    """The exact step velocity for data N(0, a^2 I) and noise N(0, s^2 I): x_r = (std_r / std_t) x_t."""
    std = lambda u: ((1 - u) ** 2 * a**2 + u**2 * s**2).sqrt()  # noqa: E731

    def u(x, r, t, labels=None):
        return x * ((1 - std(r) / std(t)) / (t - r))[:, None]
    return u


def test_two_half_steps_of_an_exact_flow_are_its_full_step():
    u = _exact_u(0.8, 0.7)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = 0.3 + 0.69 * torch.rand(64, generator=g, dtype=torch.float64)
    s = t * torch.rand(64, generator=g, dtype=torch.float64)
    loss = ShortcutLoss(ShortcutConfig(levels=20), T=0.994)  # every half step here is a trained one
    assert torch.allclose(loss.target(u, x, s, t), u(x, s, t), atol=1e-12)
    wrong = lambda x_, r, t_, labels=None: u(x_, r, t_) + 0.1 * x_  # noqa: E731  (not a flow: a big step differs)
    assert not torch.allclose(loss.target(wrong, x, s, t), wrong(x, s, t), atol=1e-3)


def test_the_target_is_two_half_steps_of_the_model_and_training_runs():
    from imm.training.loop import train_loop

    torch.manual_seed(0)
    model = AverageVelocityModel(MLP(2, hidden=16, depth=1, emb_dim=8), get_trajectory("ot_fm"), sigma_d=1.0).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    t, s = torch.full((8,), 0.9, dtype=torch.float64), torch.full((8,), 0.1, dtype=torch.float64)
    with torch.no_grad():
        mid = torch.full((8,), 0.5, dtype=torch.float64)
        v1 = model(x, mid, t)
        v2 = model(x - 0.4 * v1, s, mid)
        assert torch.allclose(ShortcutLoss(ShortcutConfig(), T=0.994).target(model, x, s, t), (v1 + v2) / 2)
    cfg = load_config("toy2d", ["method=shortcut", "model.hidden=32", "model.depth=2", "train.steps=30",
                                "train.batch_size=64", "eval.every=30", "eval.n_samples=64", "eval.steps=[1,4]",
                                "train.log_every=10", "eval.features=none", "shortcut.self_consistency=0.5"])
    metrics = train_loop(cfg, device="cpu")
    assert torch.isfinite(torch.tensor([metrics["train/loss"], metrics["energy/steps_1"], metrics["energy/steps_4"]])).all()


class Recorder:
    """A model that records the step sizes D = t - r it is asked for (0 for the instantaneous velocity)."""

    def __init__(self):
        self.asked: list[float] = []

    def __call__(self, x, r, t, labels=None):
        self.asked += [float(d) for d in (t - r)]
        return x * 0.1


def test_every_step_size_a_target_or_the_sampler_asks_for_is_trained():
    """Trained: D = 0 (flow matching) and the big steps T / 2^k, k < levels. The finest big step's target used half
    steps of T / 2^levels, which no loss trains, and 128-step sampling asked for it too. Sampling in float32 on
    [T, eps_t] with eps_t > 0 (cifar10's 0.006) keeps steps of about the finest as they are."""
    from imm.sampling import time_grid
    from imm.sampling.flow_maps import mean_steps

    loss = ShortcutLoss(ShortcutConfig(levels=7), T=0.994)
    trained = [0.0] + [0.994 / 2**k for k in range(7)]

    def untrained(asked):  # farther than 1% from every trained step size (eps_t = 0.006 shortens grids by 0.6%)
        return sorted({d for d in asked if min(abs(d - s) for s in trained) > 0.01 * max(d, 1e-9)})

    rec = Recorder()
    x = torch.randn(7, 2)
    big = torch.tensor([0.994 / 2**k for k in range(7)])
    t = torch.full((7,), 0.994)
    loss.target(rec, x, t - big, t)
    assert rec.asked and not untrained(rec.asked)
    tr = get_trajectory("ot_fm")
    for steps in (1, 2, 8, 64, 128):
        rec = Recorder()
        mean_steps(rec, x, time_grid(steps, tr, 0.006, 0.994), finest=loss.finest)
        assert not untrained(rec.asked), (steps, untrained(rec.asked))
        if steps == 64:  # every step is about the finest trained one: none may fall back to D = 0
            assert min(rec.asked) > 0.9 * loss.finest
        if steps == 128:  # finer than any trained big step: the flow-matching velocity
            assert max(rec.asked) == 0.0


def test_shortcut_models_keep_edm_s_time_scale_while_meanflow_feeds_t_unscaled():
    """Shortcut models share MeanFlow's network; a later change unscaled MeanFlow's time inputs, and shortcut models,
    tuned on 1000 t, keep it (with t unscaled their 1-step digits energy went from 0.014 to 0.031)."""
    from imm.config import load_config
    from imm.methods import build_model

    for method, scale in (("shortcut", 1000.0), ("meanflow", 1.0)):
        model = build_model(load_config("toy2d", [f"method={method}"]), (2,), 1.0)
        assert float(model.time_scale) == scale, method
