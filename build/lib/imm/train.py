"""Train in this process, with no cluster and no tracking: `python -m imm.train CONFIG [key=value ...]`.

The loop is `imm.training.loop`; this is its command line.
"""

from __future__ import annotations

import argparse
import sys

from imm.config import ConfigError, load_config
from imm.training.loop import CHECKPOINT_FILE, train


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
