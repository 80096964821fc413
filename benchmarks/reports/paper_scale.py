"""The paper-scale table of docs/paper-scale.md, estimated without a GPU: per config, the parameters, the training
FLOPs per image, the memory one GPU needs at the per-GPU batch, and the time of the paper's step count.

Everything is counted on torch's meta device (shapes only, no arithmetic), so it runs in seconds on a laptop:
- FLOPs: torch.utils.flop_counter over one IMM loss (the online pass, its backward and the no-grad target pass);
  matmuls, convolutions and attention only, as model-FLOPs utilisation (MFU) counts them.
- activations: the bytes autograd saves for the backward pass, in fp32. Under bf16 autocast most of them are
  stored at half size, so this is an upper bound.
- state: 24 bytes per parameter (fp32 weights, gradients, two Adam/RAdam moments, the EMA copy, DDP's gradient
  buckets).
- time: FLOPs / (GPUs x peak bf16 FLOP/s x MFU). No GPU has run these configs yet; MFU is an assumption (0.35,
  benchmarks/device_check.py's target), not a measurement.

    .venv/bin/python -m benchmarks.reports.paper_scale        # the Markdown table, then JSON

tests/test_doc_commands.py checks that docs/paper-scale.md quotes the table this prints.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from imm.config import load_config
from imm.methods import build_loss, build_model

CONFIGS = {  # config: (data shape, classes)
    "cifar10": ((3, 32, 32), 0),
    "imagenet256_dit": ((4, 32, 32), 1000),
}
PEAK_BF16 = {"H100 SXM": 989e12, "A100": 312e12}  # dense bf16 FLOP/s, the vendors' data sheets
MFU = 0.35
STATE_BYTES_PER_PARAM = 24
CARDS_GIB = (80, 40, 24)
PROBE_BATCH = 8  # a multiple of every config's group size M


def measure(config: str) -> dict:
    shape, classes = CONFIGS[config]
    paper = load_config(config)  # the run as configured: GPUs, batch, steps
    cfg = load_config(config, [f"train.batch_size={PROBE_BATCH}", "trainer.num_workers=1", "train.precision=fp32",
                               "data.name=8gaussians"])
    with torch.device("meta"):
        model = build_model(cfg, shape, cfg.data.sigma_d, classes)
        x = torch.empty(PROBE_BATCH, *shape)
        y = torch.zeros(PROBE_BATCH, dtype=torch.long) if classes else None
    loss_fn = build_loss(cfg)
    saved = 0

    def pack(t):
        nonlocal saved
        if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter):
            saved += t.numel() * t.element_size()
        return t

    with FlopCounterMode(display=False) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_fn(model, x, y)
        loss.backward()
    params = sum(p.numel() for p in model.parameters())
    workers, batch, steps = paper.trainer.num_workers, paper.train.batch_size, paper.train.steps
    per_gpu = batch // workers
    row = {"config": config, "params_M": params / 1e6, "gflop_per_image": counter.get_total_flops() / PROBE_BATCH / 1e9,
           "activation_gib_per_image": saved / PROBE_BATCH / 2**30, "state_gib": params * STATE_BYTES_PER_PARAM / 2**30,
           "gpus": workers, "batch": batch, "per_gpu_batch": per_gpu, "steps": steps,
           "group_size": paper.imm.group_size}
    row["memory_gib"] = row["state_gib"] + row["activation_gib_per_image"] * per_gpu
    row["accumulate"] = {f"{card} GiB": accumulate(row, card) for card in CARDS_GIB}
    total = row["gflop_per_image"] * 1e9 * batch * steps
    row["days"] = {gpu: total / (workers * peak * MFU) / 86400 for gpu, peak in PEAK_BF16.items()}
    row["gpu_hours"] = {gpu: d * 24 * workers for gpu, d in row["days"].items()}
    return row


def accumulate(row: dict, card_gib: float) -> int | None:
    """The fewest micro-batches per step (train.accumulate: dividing the per-GPU batch, each a multiple of M) whose
    fp32 activation bound fits 90% of the card; None if none does."""
    per_gpu, m = row["per_gpu_batch"], row["group_size"]
    for a in range(1, per_gpu // m + 1):
        micro = per_gpu // a
        if per_gpu % a or micro % m:
            continue
        if row["state_gib"] + row["activation_gib_per_image"] * micro <= 0.9 * card_gib:
            return a
    return None


def table(rows: list[dict]) -> str:
    cards = " / ".join(str(c) for c in CARDS_GIB)
    head = ["config", "params", "GFLOP per image", "GPUs x batch", "GiB at full batch",
            f"train.accumulate on {cards} GiB", *[f"days on {g}s" for g in PEAK_BF16], "GPU-hours (H100 / A100)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        hours = " / ".join(f"{h:,.0f}" for h in r["gpu_hours"].values())
        cells = [f"`{r['config']}`", f"{r['params_M']:.0f}M", f"{r['gflop_per_image']:.0f}",
                 f"{r['gpus']} x {r['per_gpu_batch']}", f"{r['memory_gib']:.0f}",
                 " / ".join(str(a) if a else "-" for a in r["accumulate"].values()),
                 *[f"{d:.1f}" for d in r["days"].values()], hours]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args(argv)
    rows = [measure(c) for c in args.configs]
    print(table(rows))
    print(json.dumps({"mfu_assumed": MFU, "peak_bf16": PEAK_BF16, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
