"""`imm-orch`: the command line for runs and sweeps on Ray, tracked in MLflow.

The commands are a table (`orchestrator.commands`); this module builds the parser from it and runs every command
under one error policy: a mistake in the user's input is one line with exit code 2 (`--debug` shows the
traceback), found before Ray starts; an interrupted run says how to resume it (130, 143 on SIGTERM); a
training failure is one line with exit code 1; anything else is one line here and its traceback in the log.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from orchestrator import terminal
from orchestrator.commands import COMMANDS

TOP_EXAMPLES = """\
the new-user path, on the embedded default (local Ray, MLflow and artifacts in ./imm-runs/):
  imm-orch sweep sweeps/toy2d_smoke.yaml                          # an Optuna sweep of IMM's axes on Ray
  imm-orch status toy2d_smoke                                     # its trials and the best one
  imm-orch promote --sweep toy2d_smoke --metric energy/steps_2    # best trial -> models:/toy2d_smoke@champion
  imm-orch sample --model models:/toy2d_smoke@champion --steps 2 --n 5000 --out samples.png
  imm-orch ui                                                     # the MLflow UI on http://127.0.0.1:5000
  imm-orch submit sweeps/toy2d_smoke.yaml --cluster http://HEAD:8265 --tracking-uri http://mlflow:5000 --follow

`imm-orch COMMAND --help` gives each command's options and examples; `--debug` shows tracebacks.
"""

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imm-orch",
        description="Train, sweep and promote Inductive Moment Matching models on Ray, tracked in MLflow.",
        epilog=TOP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.arguments(sub.add_parser(command.name, help=command.help, description=command.description,
                                         epilog=command.examples, formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options may come before, between or after the key=value overrides."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not COMMANDS[args.command].overrides]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = list(getattr(args, "overrides", [])) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    """The command, printing through sys.stdout/sys.stderr (as tests and library callers see it)."""
    return dispatch(parse_args(argv))


def entry() -> int:
    """The `imm-orch` program: the command with Ray's and MLflow's own output in a log file (`--verbose`: here)."""
    args = parse_args(sys.argv[1:])  # --help and usage errors reach the terminal
    if args.verbose:
        return dispatch(args)
    log = log_file(args)
    with terminal.quiet(log):
        if COMMANDS[args.command].log_root and not getattr(args, "dry_run", False):
            print(f"log: {log} (Ray's and MLflow's own messages; --verbose shows them here)", file=terminal.out())
        try:
            code = dispatch(args)
        except Exception as e:  # not one of ours: the traceback goes to the log, one line here
            import traceback

            traceback.print_exc()
            if args.debug:
                traceback.print_exc(file=terminal.err())
            print(f"imm-orch: unexpected error: {type(e).__name__}: {str(e).strip()[:300]} (traceback in {log})",
                  file=terminal.err())
            code = 1
    if log.is_file() and log.stat().st_size == 0:
        log.unlink()
    elif not COMMANDS[args.command].log_root and re.search(r"WARNING|ERROR|Traceback", log.read_text(errors="replace")):
        print(f"imm-orch: Ray's and MLflow's warnings are in {log}", file=terminal.err())
    return code


def log_file(args) -> Path:
    """`<storage.root>/logs/imm-orch-COMMAND-TIME-PID.log`: the run's or sweep's storage.root, else the default."""
    from imm.config import StorageConfig

    root, command = StorageConfig.root, COMMANDS[args.command]
    try:
        root = (command.log_root(args) if command.log_root else None) or root
    except Exception:  # the command itself reports the mistake, on the terminal
        pass
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root).expanduser().resolve() / "logs" / f"imm-orch-{args.command}-{stamp}-{os.getpid()}.log"


def dispatch(args) -> int:
    """Run the command under the error policy (the module docstring)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # tqdm bars for each model download
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run at" after each run we print
    from imm.config import ConfigError
    from imm.trained import as_flag_error

    command = COMMANDS[args.command]
    user_errors = (ConfigError, FileNotFoundError, ValueError, ConnectionError)
    try:
        if command.prepare is None:  # all of it checks input as it goes: its mistakes are the user's
            return command.run(args)
        work = command.prepare(args)
    except user_errors as e:
        return _user_error(e, args.debug, as_flag_error(e))
    try:
        return work()
    except KeyboardInterrupt as e:
        at = f" at step {e.step}" if getattr(e, "step", None) is not None else ""
        print(f"imm-orch: interrupted{at} ({command.resume_hint})", file=terminal.err())
        return 130
    except SystemExit as e:  # Ray's driver turns SIGTERM (`ray job stop`, a node shutting down) into exit(15)
        if e.code != 15:
            raise
        print(f"imm-orch: stopped by SIGTERM ({command.resume_hint})", file=terminal.err())
        return 143
    except (ConfigError, ConnectionError) as e:
        return _user_error(e, args.debug, str(e))
    except Exception as e:
        if args.debug or not _is_training_failure(e):
            raise
        print(f"imm-orch: training failed: {terminal.root_cause(e)} ({command.resume_hint}; --debug for details)",
              file=terminal.err())
        return 1


def _user_error(e: Exception, debug: bool, message: str) -> int:
    if debug:
        raise e
    print(f"imm-orch: error: {message}", file=terminal.err())
    return 2


def _is_training_failure(e: Exception) -> bool:
    try:
        from ray.train import TrainingFailedError
    except ImportError:
        return False
    return isinstance(e, TrainingFailedError)


if __name__ == "__main__":
    sys.exit(entry())
