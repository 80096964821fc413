"""The GPU switches are on by default on CUDA and change nothing on CPU.

This machine has no GPU: the CUDA decisions are checked on a torch.device("cuda") value without running a kernel
(a stand-in for the GPU, said here as the project's rule asks); the CUDA test at the end runs where CUDA exists.
"""

from __future__ import annotations

import pytest
import torch

from imm.config import load_config
from imm.training import accelerate

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _cfg(*overrides):
    return load_config("digits", ["model.arch=unet", "model.channels=8", "model.channel_mult=[1]", "model.num_blocks=1",
                                  "model.attn_resolutions=[]", *overrides])


def test_defaults_switch_everything_on_for_cuda_and_nothing_on_cpu():
    cfg = _cfg()
    assert accelerate.precision(cfg, CUDA) == "bf16" and accelerate.precision(cfg, CPU) == "fp32"
    assert accelerate.memory_format(cfg, CUDA) == torch.channels_last
    assert accelerate.memory_format(cfg, CPU) == torch.contiguous_format
    assert accelerate.memory_format(_cfg("model.arch=mlp"), CUDA) == torch.contiguous_format  # only the U-Net
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert accelerate.optimizer(cfg, params, CUDA).defaults["fused"] is True
    assert accelerate.optimizer(_cfg("train.optimizer=radam"), params, CUDA).defaults["foreach"] is True
    assert not accelerate.optimizer(cfg, params, CPU).defaults["fused"]
    assert not accelerate.autocast(cfg, CPU)._enabled


def test_each_switch_can_be_turned_off():
    cfg = _cfg("train.precision=fp32", "train.channels_last=false", "train.fused_optimizer=false")
    assert accelerate.precision(cfg, CUDA) == "fp32"
    assert accelerate.memory_format(cfg, CUDA) == torch.contiguous_format
    assert not accelerate.optimizer(cfg, [torch.nn.Parameter(torch.zeros(3))], CUDA).defaults["fused"]
    assert accelerate.precision(_cfg("train.precision=bf16"), CPU) == "bf16"  # explicit bf16 on CPU too


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_unet_run_on_cuda_trains_with_every_switch_on():
    from imm.training.loop import train_loop

    cfg = _cfg("train.steps=20", "train.batch_size=32", "eval.every=20", "eval.n_samples=64", "eval.features=none",
               "train.log_every=20", "train.checkpoint_every=20")
    metrics = train_loop(cfg, device="cuda")
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_the_gpu_benchmark_runs_every_case_on_cpu(capsys):
    """benchmarks/speed/gpu_step.py at toy size on CPU (its numbers mean something on a GPU only)."""
    from benchmarks.speed import gpu_step

    rate = gpu_step.main(["--device", "cpu", "--channels", "8", "--batches", "4", "--no-compile", "--steps", "1",
                          "--warmup", "1", "--repeats", "1"])
    assert set(rate) == {(m, mode, 4) for m in ("imm", "fm") for mode in gpu_step.MODES}
    assert "fast/eager IMM" in capsys.readouterr().out
