"""Train.accumulate=N gives the update of one step on the whole batch, on 1 and on 2 DDP workers.

The same data and the same noise: the IMM objective's randomness (group times, noise, x_t, x_r) is drawn once for
the whole batch, and each micro-batch's loss reads its rows of that draw. What is under test is the accumulation
itself: the 1/N scaling, whole groups per micro-batch, and DDP all-reducing once per update (`no_sync`).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf

from imm.config import ConfigError, load_config
from imm.methods import build_loss, build_model
from imm.methods.imm import IMMBatch
from imm.training.loop import accumulate_gradients

BATCH, M, PARTS = 64, 4, 4
# In float64, so that the sums the checks compare, taken in other orders (micro-batches, BLAS paths, gloo's
# all-reduce), agree to rounding: a sum of n terms moves by at most n * u * sum|terms| when reordered (u = 2^-53,
# n <= BATCH). TOL, relative to each gradient's largest entry, allows sum|terms| up to ~10^5 times that entry;
# a missing 1/N or a second all-reduce is off by a factor (0.25 or more).
TOL = BATCH * 2.0**-53 * 1e5


def _model_loss_and_draw(seed: int = 0):
    cfg = load_config("toy2d", [f"imm.group_size={M}", "model.hidden=32", "model.depth=2"])
    torch.manual_seed(seed)
    model, loss = build_model(cfg, (2,), 1.0).double(), build_loss(cfg)
    x = torch.randn(BATCH, 2, dtype=torch.float64)
    draw = loss.draw(x, model.sigma_d)
    draw = replace(draw, s=draw.s.double(), r=draw.r.double(), t=draw.t.double())  # drawn in the default dtype
    return model, loss, x, draw


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(b, a, rtol=0, atol=TOL * float(a.abs().max()))


def _rows(draw: IMMBatch, idx: torch.Tensor) -> IMMBatch:
    """The micro-batch of `draw` at rows idx (whole groups, in order)."""
    g = idx[::M] // M
    return IMMBatch(s=draw.s[g], r=draw.r[g], t=draw.t[g], x_t=draw.x_t[idx], x_r=draw.x_r[idx])


def _loss_on(loss, draw):
    # the labels slot carries the row indices, so each micro-batch's loss reads its rows of the one draw
    return lambda net, xb, idx: loss.objective(net, _rows(draw, idx))


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_accumulated_gradients_equal_the_whole_batch_and_a_wrong_scaling_would_not():
    model, loss, x, draw = _model_loss_and_draw()
    idx = torch.arange(BATCH)
    whole = accumulate_gradients(model, _loss_on(loss, draw), x, idx, 1)
    g_whole = _grads(model)
    model.zero_grad()
    parts = accumulate_gradients(model, _loss_on(loss, draw), x, idx, PARTS)
    g_parts = _grads(model)
    assert float(parts) == pytest.approx(float(whole), rel=TOL)
    for a, b in zip(g_whole, g_parts, strict=True):
        _close(a, b)
    # the check can fail: summing the micro-batch gradients without the 1/N is N times too large
    assert not torch.allclose(g_whole[0] * PARTS, g_parts[0], rtol=1e-3)


def _ddp_worker(rank: int, world: int, store: str, parts: int, out: str):
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    # a file store: a TCP store lives in rank 0, and rank 0 exiting first could pull it from under rank 1's teardown
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model, loss, x, draw = _model_loss_and_draw()  # the same weights and draw on both ranks
        ddp = DistributedDataParallel(model)
        reductions = []

        def counting_allreduce(state, bucket):  # DDP's own all-reduce, counted
            reductions.append(1)
            return default_hooks.allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counting_allreduce)
        rows = torch.arange(BATCH).chunk(world)[rank]  # each rank its half of the batch
        accumulate_gradients(ddp, _loss_on(loss, draw), x[rows], rows, parts)
        if rank == 0:
            torch.save({"grads": _grads(model), "reductions": len(reductions)}, out)
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def _spawn_ddp(parts: int, out) -> dict:
    import torch.multiprocessing as mp

    for attempt in range(2):
        try:
            mp.spawn(_ddp_worker, args=(2, f"{out}.{attempt}.store", parts, str(out)), nprocs=2)
            break
        except mp.ProcessExitedException as e:
            # About one start in ten here, a worker aborts in gloo's C++ ("terminate called without an active
            # exception") before any of our code fails; a second start is allowed for that case only. An assertion
            # or error raised in a worker is a ProcessRaisedException and fails the test at once.
            if attempt or e.signal_name is None:
                raise
    return torch.load(out, weights_only=True)


def test_two_ddp_workers_accumulating_equal_one_whole_batch_and_all_reduce_once(tmp_path):
    model, loss, x, draw = _model_loss_and_draw()
    accumulate_gradients(model, _loss_on(loss, draw), x, torch.arange(BATCH), 1)  # one process, the whole batch
    single = _grads(model)
    once = _spawn_ddp(1, tmp_path / "once.pt")
    accumulated = _spawn_ddp(PARTS, tmp_path / "parts.pt")
    for a, b, c in zip(single, once["grads"], accumulated["grads"], strict=True):
        _close(a, b)
        _close(a, c)
    # one all-reduce per gradient bucket per update, with or without accumulation: no_sync skipped the others
    assert accumulated["reductions"] == once["reductions"] >= 1


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.batch_size=64", "train.accumulate=3"],
     "train.accumulate: 3 must divide the per-worker batch train.batch_size / trainer.num_workers = 64/1 = 64"),
    (["train.batch_size=64", "train.accumulate=32", "imm.group_size=4"],
     "imm.group_size, train.accumulate: M=4 must divide each micro-batch (per-worker batch 64 / train.accumulate 32 = 2)"),
    (["train.accumulate=0"], "train.accumulate: 0 is out of range (allowed: >= 1)"),
])
def test_bad_accumulation_is_a_one_line_error_naming_the_keys(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("toy2d", overrides)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_the_training_loop_accumulates(tmp_path):
    """train_loop with accumulate=4 runs, and its loss curve matches accumulate=1 closely (same seeds; the
    randomness is drawn per micro-batch there, so only statistically)."""
    from imm.training.loop import train_loop

    losses = {}
    for acc in (1, 4):
        cfg = load_config("toy2d", ["train.steps=60", "train.log_every=60", "eval.every=60", "eval.n_samples=200",
                                    "eval.steps=[1]", f"train.accumulate={acc}", "train.checkpoint_every=60"])
        losses[acc] = train_loop(cfg)["train/loss"]
    assert losses[4] == pytest.approx(losses[1], rel=0.2)
    assert OmegaConf.select(cfg, "train.accumulate") == 4
