"""Each method's own times, as its authors run it: the flow maps (MeanFlow, TVM, and flow map matching after TVM)
train and sample from t = 1 and feed their network (t, t - s); IMM keeps T = 0.994 (its eta = sigma / alpha is
singular at 1) and (t, s); flow matching's network sees (t, t - s) = (t, 0), so that it can start a flow map. A
trained model keeps the times it was trained with."""

from __future__ import annotations

import pytest
import torch

from imm.config import ConfigError, config_from_dict, load_config
from imm.methods import build_model
from imm.methods.registry import pinned, resolved_s_embedding, resolved_T
from imm.sampling import generate

FLOW_MAPS = ("meanflow", "tvm")


@pytest.mark.parametrize("method", [*FLOW_MAPS, "fmm", "imm", "fm", "shortcut"])
def test_each_method_resolves_its_own_largest_time_and_time_inputs(method):
    extra = ["train.teacher=/some/teacher.pt"] if method == "fmm" else []
    for config in ("toy2d", "digits", "cifar10"):
        cfg = load_config(config, [f"method={method}", *extra])
        flow_map = method in (*FLOW_MAPS, "fmm")
        assert resolved_T(cfg) == (1.0 if flow_map else 0.994), (config, method)
        assert resolved_s_embedding(cfg) == ("stride" if flow_map or method == "fm" else "identity"), (config, method)
    # what a run sets wins
    cfg = load_config("toy2d", [f"method={method}", *extra, "T=0.99", "model.s_embedding=identity"])
    assert (resolved_T(cfg), resolved_s_embedding(cfg)) == (0.99, "identity")


def test_t_equal_to_one_is_a_flow_maps_alone_and_refused_in_one_line_elsewhere():
    assert load_config("toy2d", ["method=tvm", "T=1"]).T == 1
    with pytest.raises(ConfigError, match=r"^eps_t, T: need 0 <= eps_t < T < 1 for method=imm, got eps_t=0.0, T=1.0$"):
        load_config("toy2d", ["T=1"])
    with pytest.raises(ConfigError, match=r"^eps_t, T: need 0 <= eps_t < T <= 1 for method=tvm, got"):
        load_config("toy2d", ["method=tvm", "T=1.5"])


@pytest.mark.parametrize("method", FLOW_MAPS)
def test_a_flow_map_samples_from_t_one_and_its_network_sees_t_and_the_gap(method):
    cfg = load_config("toy2d", [f"method={method}", "model.hidden=16", "model.depth=1"])
    torch.manual_seed(0)
    model = build_model(cfg, (2,), 0.5).eval()
    seen = []
    hook = model.net.register_forward_pre_hook(lambda _, args: seen.append((args[1].clone(), args[2].clone())))
    with torch.no_grad():
        generate(model, cfg, 4, 2, seed=0, data_shape=(2,))
    hook.remove()
    k = float(model.time_input_scale())
    (t_in, gap_in), (t_next, gap_next) = seen[:2]
    assert torch.allclose(t_in, torch.full_like(t_in, k * 1.0))  # the first step starts at t = 1
    s = 1.0 - gap_in / k  # the first step's end, from the gap the network saw
    assert torch.allclose(t_next, k * s) and 0 < float(s[0]) < 1  # the second starts where the first ended
    assert torch.allclose(gap_next, t_next)  # ... and ends at 0: its gap is its start


def test_a_checkpoint_keeps_the_times_it_was_trained_with(tmp_path):
    """New checkpoints store T and model.s_embedding as resolved; an older one (T null, identity) loads at the
    trajectory's T it was trained with, not the flow map's 1."""
    from imm import train as train_cli
    from imm.trained import load_trained

    tiny = ["model.hidden=16", "model.depth=1", "train.steps=2", "train.batch_size=32", "eval.every=100",
            "train.log_every=1", "train.checkpoint_every=2"]
    assert train_cli.main(["toy2d", "method=tvm", *tiny, f"train.out_dir={tmp_path}"]) == 0
    trained = load_trained(tmp_path)
    assert (trained.config["T"], trained.config["model"]["s_embedding"]) == (1.0, "stride")
    assert trained.model.s_embedding == "stride"
    old = dict(trained.config, T=None, model=dict(trained.config["model"], s_embedding="identity"))
    cfg = config_from_dict(old, training=False)
    assert (resolved_T(cfg), resolved_s_embedding(cfg)) == (0.994, "identity")
    assert (pinned(load_config("toy2d", ["method=imm"])).T, pinned(load_config("toy2d", ["method=tvm"])).T) == (0.994, 1.0)
