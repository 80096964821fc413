"""Train in this process, with no cluster and no tracking: `python -m imm.train CONFIG [key=value ...]`.

The loop is `imm.training.loop`; this is its single-process reporter, its loading of train.init_from and
train.teacher from checkpoint paths, and its command line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imm.config import ConfigError, load_config
from imm.trained import load_trained
from imm.training.checkpoint import CHECKPOINT_FILE, load_checkpoint
from imm.training.loop import progress_line, train_loop


class LocalReporter:
    """The single-process `report`: a progress line per report and checkpoint.pt kept under out_dir."""

    def __init__(self, out_dir: str | Path, total_steps: int, stream=None):
        self.out_dir, self.total, self.stream = Path(out_dir), total_steps, stream or sys.stdout
        self.t0, self.first_step = time.perf_counter(), None

    def __call__(self, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        step, now = int(metrics["step"]), time.perf_counter()
        if self.first_step is None:
            self.first_step, self.t0 = step, now
        rate = (step - self.first_step) / (now - self.t0) if now > self.t0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        print(progress_line(metrics, self.total, eta), file=self.stream, flush=True)
        if checkpoint_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.out_dir / (CHECKPOINT_FILE + ".tmp")
            shutil.copyfile(os.path.join(checkpoint_dir, CHECKPOINT_FILE), tmp)
            os.replace(tmp, self.out_dir / CHECKPOINT_FILE)  # atomic: a crash never leaves half a checkpoint


def train(cfg: DictConfig, device: str | None = None, stream=None) -> dict[str, float]:
    """Single-process training under train.out_dir, resuming from its checkpoint.pt if present (else starting from
    train.init_from's weights, a checkpoint path here)."""
    out = Path(cfg.train.out_dir)
    resume, init = None, None
    if (out / CHECKPOINT_FILE).is_file():
        resume = load_checkpoint(out)
        print(f"resuming from {out / CHECKPOINT_FILE} at step {resume['step']}", file=stream or sys.stdout)
    if resume is None and cfg.train.init_from:
        init = load_trained(cfg.train.init_from).model
    teacher = load_trained(cfg.train.teacher) if cfg.train.teacher else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return train_loop(cfg, device=device, report=LocalReporter(out, cfg.train.steps, stream), resume=resume, init=init,
                      teacher=teacher)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imm.train",
        description="Train IMM (or a baseline) in this process; resumes from train.out_dir/checkpoint.pt.",
        epilog="examples:\n"
               "  python -m imm.train toy2d imm.group_size=8 train.steps=2000 train.out_dir=runs/m8\n"
               "  python -m imm.train digits method=fm train.out_dir=runs/digits-fm   # a baseline on sklearn's digits\n"
               "  python -m imm.train my.yaml --device cuda",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="a YAML config file, or the name of a built-in one (toy2d)")
    parser.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides, e.g. imm.kernel=rbf")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        metrics = train(cfg, device=args.device)
    except (ConfigError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {cfg.train.out_dir}/{CHECKPOINT_FILE}  " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
