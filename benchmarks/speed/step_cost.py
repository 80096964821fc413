"""Cost of one training step of each few-step method against one flow-matching step, same MLP, same batch.

IMM runs one extra no-grad forward per sample (the target), so about 4/3 of FM's forward + backward
is the floor; the grouped kernel must not grow with M. MeanFlow adds one forward-mode JVP (a forward carrying
tangents) to FM's step; TVM differentiates through its JVP and adds a no-grad forward at the end point and a
flow-matching forward; shortcut models add two no-grad half steps on a share of the batch. Prints each method's
ratio to FM and IMM(M)/IMM(M=4).

    .venv/bin/python -m benchmarks.speed.step_cost [--batch 4096] [--hidden 256] [--depth 4] [--device cpu]
    .venv/bin/python -m benchmarks.speed.step_cost --arch unet --batch 64 --channels 32   # 3x32x32 images
    .venv/bin/python -m benchmarks.speed.step_cost --arch unet --batch 512 --channels 128 --precision bf16 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from imm.config import load_config
from imm.methods import build_loss, build_model


def make_step(method: str, m: int, args):
    overrides = [f"method={method}", f"imm.group_size={m}", f"train.batch_size={args.batch}"]
    if args.arch == "unet":
        overrides += ["model.arch=unet", f"model.channels={args.channels}", "model.channel_mult=[2,2,2]",
                      f"model.num_blocks={args.depth}", "model.attn_resolutions=[16]"]
        shape = (3, 32, 32)
    else:
        overrides += [f"model.hidden={args.hidden}", f"model.depth={args.depth}"]
        shape = (2,)
    cfg = load_config("toy2d", overrides)
    torch.manual_seed(0)
    model = build_model(cfg, shape, sigma_d=0.5).to(args.device)
    if args.compile:
        model = torch.compile(model)
    loss_fn = build_loss(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, *shape, device=args.device)
    autocast = torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step():
        with autocast:
            loss = loss_fn(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step, n: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="steps per timing")
    p.add_argument("--repeats", type=int, default=7, help="interleaved timings; the median is reported")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", choices=["mlp", "unet"], default="mlp", help="unet: 3x32x32 images (--depth = blocks)")
    p.add_argument("--channels", type=int, default=32, help="unet base channels (the paper's: 128)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = p.parse_args()
    if args.arch == "unet" and args.depth == 4 and args.batch == 4096:
        args.batch, args.depth = 64, 2  # CPU-sized defaults for images

    cases = {m: make_step(m, 1, args) for m in ("fm", "meanflow", "tvm", "shortcut")}
    cases |= {f"imm M={m}": make_step("imm", m, args) for m in (2, 4, 8, 16)}
    for step in cases.values():  # warm-up
        timed(step, 3, args.device)
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):  # interleave so that machine noise hits every case alike
        for name, step in cases.items():
            samples[name].append(timed(step, args.steps, args.device))
    med = {k: statistics.median(v) for k, v in samples.items()}

    net = (f"unet 3x32x32 channels={args.channels} mult=[2,2,2] blocks={args.depth}" if args.arch == "unet"
           else f"mlp hidden={args.hidden} depth={args.depth}")
    print(f"device={args.device} batch={args.batch} {net} precision={args.precision} compile={args.compile} "
          f"threads={torch.get_num_threads()} (median of {args.repeats} x {args.steps} steps)")
    print(f"{'case':<12} {'ms/step':>9} {'vs FM':>7} {'vs M=4':>7}")
    for name, t in med.items():
        vs_m4 = f"{t / med['imm M=4']:.3f}" if name.startswith("imm") else "-"
        print(f"{name:<12} {1e3 * t:9.2f} {t / med['fm']:7.3f} {vs_m4:>7}")
    imm = [med[f"imm M={m}"] for m in (2, 4, 8, 16)]
    print(f"IMM(M=4)/FM = {med['imm M=4'] / med['fm']:.3f} (target <= 1.35); "
          f"spread over M = {max(imm) / min(imm) - 1:.1%} (target <= 5%)")


if __name__ == "__main__":
    main()
