"""Training throughput of the paper's CIFAR-10 network, DDPM++ (imm/configs/cifar10.yaml), per GPU: eager fp32 against the
GPU switches (bf16 autocast + torch.compile + channels_last + TF32 + fused optimizer, imm/training/accelerate.py), IMM
against flow matching, at per-GPU batch 256 and 512. One run measures every case, interleaved, and prints images/s,
peak memory and the ratios. Targets (issue 18): fast/eager >= 1.8 and IMM/FM <= 1.35 with the switches on.

    .venv/bin/python -m benchmarks.speed.gpu_step                             # on a GPU: the paper's network
    .venv/bin/python -m benchmarks.speed.gpu_step --device cpu --channels 16 --batches 8 --no-compile --steps 2  # smoke

benchmarks/device_check.py runs it on a bare GPU machine, with its training_step for the utilisation section.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from imm.config import load_config
from imm.methods import build_loss, build_model
from imm.training import accelerate

MODES = {  # the train.* switches of each mode
    "eager fp32": ["train.precision=fp32", "train.tf32=false", "train.channels_last=false",
                   "train.fused_optimizer=false"],
    "fast": ["train.precision=bf16", "train.tf32=true", "train.channels_last=true", "train.fused_optimizer=true"],
}


def training_step(cfg, shape, classes: int, device: str, compile_: bool):
    """(step(module=None), model): one training step of `cfg` on a fixed random batch, with cfg's GPU switches."""
    dev = torch.device(device)
    accelerate.configure_backends(cfg, dev)
    layout = accelerate.memory_format(cfg, dev)
    torch.manual_seed(0)
    model = build_model(cfg, shape, 0.5, classes).to(dev, memory_format=layout)
    net = torch.compile(model) if compile_ else model
    loss_fn, autocast = build_loss(cfg), accelerate.autocast(cfg, dev)
    opt = accelerate.optimizer(cfg, model.parameters(), dev)
    batch = cfg.train.batch_size
    x = torch.randn(batch, *shape, device=dev).contiguous(memory_format=layout)
    y = torch.randint(classes, (batch,), device=dev) if classes else None

    def step(module=None):
        with autocast:
            loss = loss_fn(module or net, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step, model


def make_step(method: str, mode: str, batch: int, args):
    overrides = [f"method={method}", f"train.batch_size={batch}", "trainer.num_workers=1", *MODES[mode]]
    if args.channels:
        overrides.append(f"model.channels={args.channels}")
    cfg = load_config("cifar10", overrides)
    torch.set_float32_matmul_precision("highest")  # each mode sets its own below
    torch.backends.cudnn.allow_tf32 = False
    train_step, _ = training_step(cfg, (3, 32, 32), 0, args.device, mode == "fast" and args.compile)

    def step():
        # the backends are process-wide: set this mode's before each timed block
        torch.set_float32_matmul_precision("high" if cfg.train.tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = bool(cfg.train.tf32)
        train_step()

    return step


def timed(step, n: int, device: str) -> tuple[float, float]:
    """Seconds per step and peak memory (GiB, CUDA only) over n steps."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return (time.perf_counter() - t0) / n, peak


def main(argv: list[str] | None = None) -> dict[tuple[str, str, int], float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[256, 512], help="per-GPU batch sizes")
    p.add_argument("--channels", type=int, default=None, help="U-Net base channels (default: the paper's 128)")
    p.add_argument("--steps", type=int, default=20, help="steps per timing")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cuDNN autotuning)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timings; the median is reported")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="the fast mode without torch.compile")
    args = p.parse_args(argv)

    cases = {(m, mode, b): make_step(m, mode, b, args) for b in args.batches for mode in MODES for m in ("imm", "fm")}
    peak = {}
    for key, step in cases.items():
        for _ in range(args.warmup):
            step()
        peak[key] = timed(step, 1, args.device)[1]
    samples: dict[tuple, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for key, step in cases.items():
            samples[key].append(timed(step, args.steps, args.device)[0])
    rate = {k: k[2] / statistics.median(v) for k, v in samples.items()}  # images/s

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{name}: cifar10 DDPM++ (channels {args.channels or 128}), compile={args.compile}, "
          f"median of {args.repeats} x {args.steps} steps")
    print(f"{'method':<6} {'mode':<11} {'batch':>5} {'images/s':>10} {'peak GiB':>9}")
    for (m, mode, b), r in rate.items():
        print(f"{m:<6} {mode:<11} {b:>5} {r:10.1f} {peak[(m, mode, b)]:9.2f}")
    for b in args.batches:
        fast = {m: rate[(m, "fast", b)] / rate[(m, "eager fp32", b)] for m in ("imm", "fm")}
        cost = {mode: rate[("fm", mode, b)] / rate[("imm", mode, b)] for mode in MODES}
        print(f"batch {b}: fast/eager IMM {fast['imm']:.2f}x, FM {fast['fm']:.2f}x (target >= 1.8); "
              f"IMM/FM step time {cost['fast']:.2f} fast, {cost['eager fp32']:.2f} eager (target <= 1.35)")
    return rate


if __name__ == "__main__":
    main()
