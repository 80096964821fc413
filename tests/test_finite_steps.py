"""No NaN from groups with s = t (fixed at the cause), and the guard a long run needs anyway (a step with a
non-finite gradient is skipped on every rank, counted, logged, survives a resume, and too many in a row stop the run).
"""

from __future__ import annotations

import math

import pytest
import torch

from imm.config import load_config
from imm.maths.kernels import KERNELS
from imm.maths.trajectories import get_trajectory
from imm.maths.weighting import MIN_GAP, sample_times
from imm.methods.imm import IMMConfig, IMMLoss
from imm.networks import OneStepModel
from imm.networks.mlp import MLP
from imm.networks.precond import PARAMETERIZATIONS

TINY = ["train.steps=30", "train.log_every=10", "eval.every=30", "eval.n_samples=64", "eval.steps=[1]",
        "train.checkpoint_every=10", "model.hidden=32", "model.depth=2", "train.batch_size=64", "eval.features=none"]


def _model(param: str, traj: str) -> OneStepModel:
    torch.manual_seed(0)
    return OneStepModel(MLP(3, hidden=32, depth=2, emb_dim=16), get_trajectory(traj), param, sigma_d=0.5)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("param", PARAMETERIZATIONS)
@pytest.mark.parametrize("traj", ["ot_fm", "cosine"])
def test_a_group_forced_to_s_equal_t_gives_finite_gradients(kernel, param, traj):
    """s = r = t for one group of two: c_out = 0 there, the kernel scale stays finite, G gets a zero gradient from that
    group and the other group's gradient is untouched."""
    model = _model(param, traj)
    loss = IMMLoss(get_trajectory(traj), IMMConfig(group_size=4, kernel=kernel), eps_t=0.006, T=0.994)
    x = torch.randn(8, 3)
    s, t = torch.tensor([0.3, 0.2]), torch.tensor([0.3, 0.7])  # group 0: s = t
    batch = loss.draw(x, model.sigma_d, times=(s, t))
    assert float(batch.r[0]) == float(batch.t[0])  # r = max(s, ...) = s = t: the case that used to give 0 * inf
    assert bool(torch.isfinite(model.kernel_scale(batch.s, batch.t)).all())
    per_group = loss.per_group(model, batch)
    assert bool(torch.isfinite(per_group).all()) and float(per_group[0].detach()) == 0.0
    grads = torch.autograd.grad(per_group[0], list(model.parameters()), allow_unused=True)
    assert all(g is None or (bool(torch.isfinite(g).all()) and float(g.abs().max()) == 0.0) for g in grads)
    loss.objective(model, batch).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert any(float(p.grad.abs().max()) > 0 for p in model.parameters())  # group 1 still trains the network


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
@pytest.mark.parametrize("traj", ["ot_fm", "cosine"])
def test_c_out_is_exact_near_s_equal_t_and_matches_its_closed_form(param, traj):
    """c_out from alpha_s sigma_t - sigma_s alpha_t in float64 equals the stable form, and in float32 one spacing
    apart it is nonzero (the product form rounds to 0 there for simple_edm and identity)."""
    model = _model(param, traj).double()
    tr = get_trajectory(traj)
    s, t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), torch.tensor([0.4, 0.7, 0.99], dtype=torch.float64)
    cross = tr.alpha(s) * tr.sigma(t) - tr.sigma(s) * tr.alpha(t)
    torch.testing.assert_close(tr.cross(s, t), cross, rtol=1e-12, atol=0)
    norm = (tr.alpha(t) ** 2 + tr.sigma(t) ** 2).sqrt()
    expected = {"euler_fm": (t - s) * 0.5, "identity": cross / tr.sigma(t), "simple_edm": -cross * 0.5 / norm}[param]
    torch.testing.assert_close(model.c_out(s, t), expected, rtol=1e-12, atol=0)
    t32 = torch.tensor([0.3, 0.994])
    s32 = torch.nextafter(t32, torch.zeros(2))
    assert bool((_model(param, traj).c_out(s32, t32) != 0).all())


@pytest.mark.parametrize("kind", ["uniform", "lognormal"])
@pytest.mark.parametrize("eps_t", [0.0, 0.006])
def test_time_samplers_keep_s_strictly_below_t(kind, eps_t):
    """t - s >= MIN_GAP and t > eps_t for every draw; the lognormal sampler is truncated, not clamped: no group
    piles up at t = eps_t (a clamp put ~0.8% of them there with eps_t = 0.006)."""
    tr = get_trajectory("ot_fm")
    g = torch.Generator().manual_seed(0)
    s, t = sample_times(200_000, tr, eps_t, 0.994, kind, generator=g)
    assert bool((t - s >= MIN_GAP * 0.99).all()) and bool((s >= eps_t).all()) and bool((t <= 0.994).all())
    assert float((t < eps_t + 1e-4).float().mean()) < 1e-3
    if kind == "lognormal":  # truncation keeps the shape: the median of eta is still exp(p_mean) (bounds far away)
        assert abs(float(tr.eta(t.double()).median()) - math.exp(-0.4)) < 0.02


def test_lognormal_training_with_cifar10s_eps_t_is_finite_and_skips_nothing():
    """`imm.time_sampler=lognormal eps_t=0.006` died with `train/loss became nan by step 100`; 400 steps now finish
    with finite metrics, and not by skipping: train/skipped_steps = 0."""
    from imm.training.loop import train_loop

    cfg = load_config("toy2d", ["imm.time_sampler=lognormal", "eps_t=0.006", "train.steps=400", "eval.every=400",
                                "eval.n_samples=500", "eval.steps=[1,2]"])
    metrics = train_loop(cfg)
    assert metrics["train/skipped_steps"] == 0
    assert all(math.isfinite(v) for v in metrics.values())


class NaNGradient(torch.autograd.Function):
    """The identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class NonFiniteAt:
    """The run's loss made NaN (or, loss_finite: only its gradient) at the given calls (= steps, accumulate=1)."""

    def __init__(self, inner, steps: set[int], loss_finite: bool = False):
        self.inner, self.steps, self.calls, self.loss_finite = inner, steps, 0, loss_finite

    def __call__(self, model, x, y):
        self.calls += 1
        loss = self.inner(model, x, y)
        if self.calls not in self.steps:
            return loss
        return NaNGradient.apply(loss) if self.loss_finite else loss * float("nan")


def _inject(steps: set[int], loss_finite: bool = False):
    """Patch imm.training.loop's loss builder (in this process) to inject NaN at `steps`; returns the real one."""
    import imm.training.loop

    real = imm.training.loop.build_loss
    imm.training.loop.build_loss = lambda cfg, teacher=None: NonFiniteAt(real(cfg, teacher=teacher), steps, loss_finite)
    return real


def _ddp_guard_worker(rank: int, world: int, store: str, out: str):
    import torch.distributed as dist

    import imm.training.loop

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        _inject({5, 12, 13} if rank == 1 else set())  # only rank 1's gradient goes non-finite
        reports = []
        cfg = load_config("toy2d", [*TINY, "trainer.num_workers=2"])
        imm.training.loop.train_loop(cfg, rank=rank, world_size=world, device="cpu",
                             report=lambda m, ckpt: reports.append(dict(m)))
        torch.save({"skipped": [(int(m["step"]), m["train/skipped_steps"]) for m in reports],
                    "losses": [m["train/loss"] for m in reports]}, f"{out}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_a_non_finite_gradient_on_one_ddp_rank_is_skipped_on_every_rank_and_counted(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "guard")
    for attempt in range(2):
        try:
            mp.spawn(_ddp_guard_worker, args=(2, f"{out}.{attempt}.store", out), nprocs=2)
            break
        except mp.ProcessExitedException as e:  # gloo's rare C++ abort at start-up (see test_accumulate)
            if attempt or e.signal_name is None:
                raise
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [(10, 1), (20, 3), (30, 3)]
    assert all(math.isfinite(v) for r in ranks for v in r["losses"])  # the skipped losses are out of the averages


def test_skips_are_counted_logged_and_survive_a_resume(tmp_path):
    import imm.training.loop

    real = _inject({5, 12})
    try:
        cfg = load_config("toy2d", TINY)
        kept, reports = {}, []

        def report(metrics, ckpt):
            reports.append(dict(metrics))
            if ckpt and metrics["step"] == 10:
                kept["state"] = imm.training.checkpoint.load_checkpoint(ckpt)

        imm.training.loop.train_loop(cfg, report=report)
        assert [(int(m["step"]), m["train/skipped_steps"]) for m in reports] == [(10, 1), (20, 2), (30, 2)]
        state = kept["state"]
        assert state["skipped_steps"] == 1 and state["skipped_in_a_row"] == 0
        # the skipped step left the optimizer alone: Adam's own step count is 10 - 1
        assert int(next(iter(state["optimizer"]["state"].values()))["step"]) == 9
        assert int(state["ema_updates"]) == 9
        imm.training.loop.build_loss = real  # resumed at step 10 with no more injections: the count goes on from 1
        resumed = []
        imm.training.loop.train_loop(cfg, resume=state, report=lambda m, c: resumed.append(dict(m)))
        assert [m["train/skipped_steps"] for m in resumed] == [1, 1]
    finally:
        imm.training.loop.build_loss = real


@pytest.mark.parametrize("loss_finite", [False, True])
def test_too_many_skips_in_a_row_stop_the_run_with_a_one_line_cause(loss_finite):
    import imm.training.loop

    real = _inject({4, 5, 6}, loss_finite)
    try:
        with pytest.raises(FloatingPointError) as e:
            imm.training.loop.train_loop(load_config("toy2d", [*TINY, "train.max_skipped_steps=3"]))
    finally:
        imm.training.loop.build_loss = real
    cause = ("the gradient was not finite 3 steps in a row (steps 4-6, train.max_skipped_steps=3); lower train.lr or "
             "check the data")
    # a diverged loss is named first (as before the guard); a finite loss with a non-finite gradient is not
    assert str(e.value) == (cause if loss_finite else f"train/loss became nan by step 4: {cause}")
