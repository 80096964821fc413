"""`train.init_from`: a run starts from a trained model's weights (its EMA's), network and EMA both, with a fresh
optimizer; a model of another method read the same way starts it too (a flow map warm-started from its flow-matching
teacher); a model that does not fit is refused in one line, before Ray starts, naming both configs."""

from __future__ import annotations

import pytest
import torch

from imm.config import load_config
from imm.trained import load_trained
from imm.training.checkpoint import CHECKPOINT_FILE, load_checkpoint
from imm.training.loop import train_loop
from orchestrator import cli

TINY = ["model.hidden=32", "model.depth=1", "model.emb_dim=16", "train.batch_size=64", "train.log_every=10",
        "eval.every=1000", "data.n_train=2000", "data.n_heldout=500"]


def trained(out, *overrides):
    """A 20-step toy2d checkpoint under `out` (its final training checkpoint): (out, its state)."""
    saved = {}

    def report(metrics, ckpt_dir):
        if ckpt_dir:
            saved["state"] = torch.load(f"{ckpt_dir}/{CHECKPOINT_FILE}", weights_only=True)
            torch.save(saved["state"], out / CHECKPOINT_FILE)

    train_loop(load_config("toy2d", [*TINY, *overrides, "train.steps=20", "train.checkpoint_every=20"]), report=report)
    return out, saved["state"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A 20-step toy2d IMM checkpoint."""
    return trained(tmp_path_factory.mktemp("parent"))


@pytest.fixture(scope="module")
def fm_teacher(tmp_path_factory):
    """A 20-step toy2d flow-matching checkpoint: a teacher whose network sees 1000 t."""
    return trained(tmp_path_factory.mktemp("fm"), "method=fm")


def test_the_network_and_its_ema_start_from_the_parents_ema(parent):
    path, state = parent
    cfg = load_config("toy2d", [*TINY, "train.steps=1", "train.lr=1e-12", "train.checkpoint_every=1",
                                f"train.init_from={path}"])
    child = {}
    train_loop(cfg, report=lambda m, d: child.update(torch.load(f"{d}/{CHECKPOINT_FILE}", weights_only=True)) if d
               else None, init=load_trained(path).model)
    for k, v in state["ema"].items():  # one step at lr 1e-12 from the parent's EMA: where it started
        torch.testing.assert_close(child["model"][k], v, atol=1e-6, rtol=0)
        torch.testing.assert_close(child["ema"][k], v, atol=1e-6, rtol=0)
    assert child["step"] == 1 and child["optimizer"]["state"][0]["step"] == 1  # the optimizer started fresh
    scratch = {}
    train_loop(load_config("toy2d", [*TINY, "train.steps=1", "train.lr=1e-12", "train.checkpoint_every=1"]),
               report=lambda m, d: scratch.update(torch.load(f"{d}/{CHECKPOINT_FILE}", weights_only=True)) if d
               else None)
    assert any(not torch.allclose(scratch["model"][k], v, atol=1e-3) for k, v in state["ema"].items())


def test_imm_train_starts_from_a_checkpoint_path(parent, tmp_path, capsys):
    from imm import train as train_cli

    path, state = parent
    out = tmp_path / "child"
    train_cli.main(["toy2d", *TINY, "train.steps=1", "train.lr=1e-12", "train.checkpoint_every=1",
                    f"train.out_dir={out}", f"train.init_from={path}"])
    child = load_checkpoint(out)
    for k, v in state["ema"].items():
        torch.testing.assert_close(child["ema"][k], v, atol=1e-6, rtol=0)


@pytest.mark.parametrize("change, message", [
    (["method=fm"], "its network's output parameterisation is simple_edm and this run's euler_fm"),
    (["model.hidden=64"], "its network does not fit this run's (t_embed.0.weight: [32, 16] there, [64, 16] here)"),
    (["model.arch=unet"], "is a method=imm, model.arch=mlp model and this run trains method=imm, model.arch=unet"),
])
def test_a_model_that_does_not_fit_is_refused_before_ray(parent, tmp_path, capsys, no_ray, change, message):
    path, _ = parent
    code = cli.main(["train", "toy2d", *TINY, *change, f"train.init_from={path}", f"storage.root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and "train.init_from: " in err, err


def test_a_missing_model_is_one_line(tmp_path, capsys, no_ray):
    code = cli.main(["train", "toy2d", f"train.init_from={tmp_path / 'nothing'}", f"storage.root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("imm-orch: error: train.init_from: nothing to load at") and err.count("\n") == 1


def test_a_tvm_student_starts_from_its_flow_matching_teacher(fm_teacher, tmp_path):
    """The warm start of a distilled flow map: the student's network is the teacher's, so its velocity at gap 0,
    u(z, t, t), is the teacher's v(z, t) before it trains (lr 1e-12: one step that moves nothing)."""
    path, _ = fm_teacher
    out = tmp_path / "student"
    from imm import train as train_cli

    assert train_cli.main(["toy2d", *TINY, "method=tvm", "tvm.time_scale=1000", "train.steps=1", "train.lr=1e-12",
                           "train.checkpoint_every=1", f"train.out_dir={out}", f"train.init_from={path}",
                           f"train.teacher={path}"]) == 0
    student, teacher = load_trained(out).model, load_trained(path).model
    z, t = torch.randn(256, 2), torch.rand(256)
    torch.testing.assert_close(student(z, t, t), teacher(z, t), atol=1e-5, rtol=1e-5)
    scratch = load_config("toy2d", [*TINY, "method=tvm", "tvm.time_scale=1000"])
    from imm.methods import build_model

    fresh = build_model(scratch, (2,), float(teacher.sigma_d))
    assert not torch.allclose(fresh(z, t, t), teacher(z, t), atol=1e-2)  # the test can fail: a fresh one differs


def test_a_student_on_another_time_scale_is_refused_before_ray(fm_teacher, tmp_path, capsys, no_ray):
    path, _ = fm_teacher
    code = cli.main(["train", "toy2d", *TINY, "method=tvm", f"train.init_from={path}", f"storage.root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "its network's time input scale is 1000 and this run's 1 (set the method's time_scale" in err, err


@pytest.mark.parametrize("method", ["vae", "ddpm"])
def test_models_without_a_flow_maps_reading_start_from_their_own_kind(method, tmp_path):
    """A VAE (no `net`: the whole model carries over) and DDPM's epsilon model start from their own trained weights."""
    path, state = trained(tmp_path, f"method={method}")
    child = load_config("toy2d", [*TINY, f"method={method}", "train.steps=1", "train.lr=1e-12",
                                  "train.checkpoint_every=1", f"train.init_from={path}"])
    saved = {}
    train_loop(child, report=lambda m, d: saved.update(torch.load(f"{d}/{CHECKPOINT_FILE}", weights_only=True)) if d
               else None, init=load_trained(path).model)
    for k, v in state["ema"].items():
        torch.testing.assert_close(saved["ema"][k], v, atol=1e-6, rtol=0)
