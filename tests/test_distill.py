"""train.teacher: distilling a trained velocity model. With the exact velocity of Gaussian data as the
teacher, the exact flow map is a zero of every distilling loss (no conditional-velocity noise is left), and a map
wrong by a factor is not; a teacher is refused in one line when it cannot teach the run."""

from __future__ import annotations

import pytest
import torch
from test_tvm import GaussianFlowMap

from imm.config import ConfigError, load_config
from imm.methods.fmm import FMMConfig, FMMLoss
from imm.methods.meanflow import MeanFlowConfig, MeanFlowLoss
from imm.methods.tvm import TVMConfig, TVMLoss

TINY = ["model.hidden=32", "model.depth=1", "model.emb_dim=16", "train.batch_size=64", "train.log_every=10",
        "eval.every=1000", "data.n_train=2000", "data.n_heldout=500", "eval.n_samples=200"]


class ExactTeacher:
    """The marginal velocity of data N(0, a^2 I) under noise N(0, sd^2 I): the flow map's u(z, t, t)."""

    def __init__(self, a, sd):
        self.map = GaussianFlowMap(a, sd)

    def velocity(self, z, t, labels=None, grad=False):
        return self.map(z, t, t)


@pytest.mark.parametrize("loss", [MeanFlowLoss(MeanFlowConfig(adaptive_p=0.0, r_equals_t=0.25), T=0.994),
                                  TVMLoss(TVMConfig(), T=0.994),
                                  FMMLoss(FMMConfig("lagrangian"), TVMLoss(TVMConfig(), T=0.994)),
                                  FMMLoss(FMMConfig("eulerian"), TVMLoss(TVMConfig(), T=0.994))],
                         ids=["meanflow", "tvm", "fmm-lagrangian", "fmm-eulerian"])
def test_the_exact_map_is_a_zero_of_the_distilled_loss_and_a_wrong_one_is_not(loss):
    a, sd = 0.8, 0.7
    x = a * torch.randn(4096, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss.teacher = ExactTeacher(a, sd)
    torch.manual_seed(1)
    exact = float(loss(GaussianFlowMap(a, sd), x))
    torch.manual_seed(1)
    wrong = float(loss(GaussianFlowMap(a, sd, scale=1.1), x))
    assert exact < 1e-12 and wrong > 1e-4, (exact, wrong)  # float64 rounding of small gaps: ~1e-15
    if isinstance(loss, FMMLoss):
        return
    loss.teacher = None  # from the data the exact map is not a zero: eps - x is the velocity only on average
    torch.manual_seed(1)
    assert float(loss(GaussianFlowMap(a, sd), x)) > 1e-2


class WrongAtGapZero(GaussianFlowMap):
    """The exact map at every gap t - s > 0, and 10% off at gap 0: the instantaneous velocity that anchors it."""

    def forward(self, z, s, t, labels=None):
        return super().forward(z, s, t) * torch.where(t == s, 1.1, 1.0).to(z.dtype)[:, None]


@pytest.mark.parametrize("objective", ["lagrangian", "eulerian"])
def test_fmm_anchors_the_map_at_gap_zero_which_the_time_sampler_does_not_draw(objective):
    """Neither condition sees gap 0 under TVM's time sampler, so a map wrong only there is a zero of the bare
    residual; fmm.anchor's term is not zero for it, and is zero for the exact map."""
    a, sd = 0.8, 0.7
    x = a * torch.randn(4096, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bare = FMMLoss(FMMConfig(objective, anchor=False), TVMLoss(TVMConfig(), T=0.994))
    anchored = FMMLoss(FMMConfig(objective), TVMLoss(TVMConfig(), T=0.994))
    bare.teacher = anchored.teacher = ExactTeacher(a, sd)
    torch.manual_seed(1)
    assert float(bare(WrongAtGapZero(a, sd), x)) < 1e-12
    torch.manual_seed(1)
    assert float(anchored(WrongAtGapZero(a, sd), x)) > 1e-4
    torch.manual_seed(1)
    assert float(anchored(GaussianFlowMap(a, sd), x)) < 1e-12


def test_only_the_methods_that_distill_take_a_teacher():
    with pytest.raises(ConfigError, match=r"^train.teacher: method=imm does not distill; the methods that do: "
                                          r"\['meanflow', 'tvm', 'fmm'\]$"):
        load_config("toy2d", ["train.teacher=/some/checkpoint"])
    assert load_config("toy2d", ["method=tvm", "train.teacher=/some/checkpoint"]).train.teacher == "/some/checkpoint"


@pytest.fixture(scope="module")
def fm_teacher(tmp_path_factory):
    """A 40-step toy2d flow-matching checkpoint, trained by `python -m imm.train`."""
    from imm import train as train_cli

    out = tmp_path_factory.mktemp("teacher")
    assert train_cli.main(["toy2d", *TINY, "method=fm", "train.steps=40", f"train.out_dir={out}"]) == 0
    return out


def test_a_student_distills_a_checkpoint_path_and_a_mismatched_teacher_is_one_line(fm_teacher, tmp_path, capsys):
    from imm import train as train_cli
    from imm.training.checkpoint import load_checkpoint

    out = tmp_path / "student"
    assert train_cli.main(["toy2d", *TINY, "method=meanflow", "train.steps=10", f"train.out_dir={out}",
                           f"train.teacher={fm_teacher}"]) == 0
    assert load_checkpoint(out)["step"] == 10
    capsys.readouterr()
    code = train_cli.main(["toy2d", *TINY, "method=tvm", "data.name=moons", "train.steps=10",
                           f"train.out_dir={tmp_path / 'other'}", f"train.teacher={fm_teacher}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"train.teacher: {fm_teacher} was trained on data.name=8gaussians, this run on moons" in err


def test_fmm_trains_only_from_a_teacher():
    with pytest.raises(ConfigError, match=r"^train.teacher: method=fmm distills a trained velocity model; name one"):
        load_config("toy2d", ["method=fmm"])
    from omegaconf import OmegaConf

    from imm.config import config_from_dict

    trained = OmegaConf.to_container(load_config("toy2d", ["method=fmm", "train.teacher=/x"]))
    trained["train"]["teacher"] = None  # a trained model, loaded without its teacher at hand, is sampled
    assert config_from_dict(trained, training=False).method == "fmm"


@pytest.mark.parametrize("overrides", [["method=fmm", "fmm.objective=lagrangian"], ["method=fmm", "fmm.objective=eulerian"],
                                       ["method=meanflow", "meanflow.tangent=model"]],
                         ids=["lmd", "emd", "meanflow-distilled-imf-tangent"])
def test_the_distilling_methods_train_from_a_flow_matching_checkpoint(fm_teacher, tmp_path, overrides):
    from imm import train as train_cli
    from imm.training.checkpoint import load_checkpoint

    out = tmp_path / "student"
    assert train_cli.main(["toy2d", *TINY, *overrides, "train.steps=10", "eval.every=10", f"train.out_dir={out}",
                           f"train.teacher={fm_teacher}"]) == 0
    assert load_checkpoint(out)["step"] == 10


def test_a_teacher_of_the_other_conditioning_is_refused_in_one_line(fm_teacher):
    from imm.trained import load_trained
    from imm.training.teacher import check_teacher

    cfg = load_config("toy2d", ["method=tvm", "model.class_conditional=true", f"train.teacher={fm_teacher}"])
    with pytest.raises(ConfigError, match=rf"^train.teacher: {fm_teacher} is unconditional and this run has "
                                          r"model.class_conditional=True$"):
        check_teacher(cfg, load_trained(fm_teacher))


class ScaledMap(GaussianFlowMap):
    """The exact map times a learnable scale (1.1: wrong, so that the residual and its gradient are not zero)."""

    def __init__(self, a, sd):
        super().__init__(a, sd)
        self.scale = torch.nn.Parameter(torch.tensor(1.1, dtype=torch.float64))


def test_fmm_teacher_grad_switches_exactly_the_gradient_through_the_teachers_input():
    """LMD's residual u - (t - s) d_s u - v_T(z - (t - s) u, s) uses u twice: in the map's own terms and in the
    teacher's input. With two copies of the parameter, one per use, autograd splits the gradient by path:
    fmm.teacher_grad=false gives the first path's alone, true both; the teacher's path is not zero."""
    a, sd = 0.8, 0.7
    x = a * torch.randn(512, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads, logged = {}, {}
    for switch in (True, False):
        loss = FMMLoss(FMMConfig("lagrangian", anchor=False, teacher_grad=switch), TVMLoss(TVMConfig(), T=0.994))
        loss.teacher, loss.diagnose = ExactTeacher(a, sd), True
        model = ScaledMap(a, sd)
        torch.manual_seed(1)
        (grads[switch],) = torch.autograd.grad(loss(model, x), [model.scale])
        logged[switch] = loss.diagnostics

    from imm.methods.common import ot_fm_point

    own, through_teacher = ScaledMap(a, sd), ScaledMap(a, sd)  # one parameter per path, the same value
    torch.manual_seed(1)
    t, s, _ = loss.times(x.shape[0], x.device)
    z = ot_fm_point(x, t, sd)[0]
    u, du_ds = TVMLoss.velocity_and_jvp(own, z, s, t, torch.ones_like(s))
    gap = (t - s)[:, None]
    v_end = ExactTeacher(a, sd).velocity(z - gap * through_teacher(z, s, t), s)
    g_own, g_teacher = torch.autograd.grad((u - gap * du_ds - v_end).square().mean(), [own.scale, through_teacher.scale])
    assert torch.allclose(grads[False], g_own, rtol=1e-10)
    assert torch.allclose(grads[True], g_own + g_teacher, rtol=1e-10)
    assert abs(float(g_teacher)) > 1e-3 * abs(float(g_own))
    # the norms logged by path (the model has one parameter: a norm is an absolute value)
    assert logged[True]["fmm/grad_norm_own"] == pytest.approx(abs(float(g_own)), rel=1e-9)
    assert logged[True]["fmm/grad_norm_teacher_input"] == pytest.approx(abs(float(g_teacher)), rel=1e-9)
    assert logged[False]["fmm/grad_norm_own"] == pytest.approx(abs(float(g_own)), rel=1e-9)


def test_the_training_loop_logs_lmds_gradient_paths_on_the_steps_that_log_only(fm_teacher, monkeypatch):
    from imm.trained import load_trained
    from imm.training.loop import train_loop

    measured = []
    paths = FMMLoss.gradient_paths
    monkeypatch.setattr(FMMLoss, "gradient_paths", lambda self, *a: measured.append(1) or paths(self, *a))
    cfg = load_config("toy2d", [*TINY, "method=fmm", "train.steps=20", "train.log_every=10", "eval.every=20",
                                f"train.teacher={fm_teacher}"])
    seen = {}
    train_loop(cfg, device="cpu", teacher=load_trained(str(fm_teacher)),
               report=lambda metrics, checkpoint_dir: seen.update({int(metrics["step"]): metrics}))
    assert sorted(seen) == [10, 20] and len(measured) == 2  # measured on the 2 steps that log, not the other 18
    for metrics in seen.values():
        assert metrics["fmm/grad_norm_own"] > 0 and metrics["fmm/grad_norm_teacher_input"] > 0


def test_fmm_teacher_grad_false_is_refused_for_the_eulerian_objective():
    with pytest.raises(ConfigError, match=r"^fmm.teacher_grad: false applies to fmm.objective=lagrangian only"):
        load_config("toy2d", ["method=fmm", "train.teacher=/x", "fmm.objective=eulerian", "fmm.teacher_grad=false"])


def test_a_distilled_tvm_refuses_guidance_it_would_not_use():
    """A distilled TVM's targets are the teacher's velocities: tvm.guidance would be silently ignored."""
    with pytest.raises(ConfigError, match=r"^tvm.guidance: 2.0 is not used by a distilled TVM \(train.teacher\)"):
        load_config("toy2d", ["method=tvm", "train.teacher=/x", "tvm.guidance=2"])
    assert load_config("toy2d", ["method=tvm", "tvm.guidance=2"]).tvm.guidance == 2  # trained from data: used
    # another method's run, and a trained TVM loaded to sample, do not hear about it
    assert load_config("toy2d", ["method=meanflow", "train.teacher=/x", "tvm.guidance=2"]).method == "meanflow"
