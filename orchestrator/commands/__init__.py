"""The table of `imm-orch` commands: a command is one module here (or anywhere) that calls `register(Command(...))`;
every module in this folder is imported here, so adding a command is adding a file.

`orchestrator.cli` builds its parser from this table and runs every command under one error policy; a module
only says its arguments, its help with examples and what it runs. Modules import what they run inside their
functions, so `imm-orch --help` starts no torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    help: str  # one line in `imm-orch --help`
    description: str  # the first paragraph of `imm-orch NAME --help`
    examples: str  # its epilog: examples and notes
    arguments: Callable[[argparse.ArgumentParser], None]
    # run(args) -> the exit code; the whole of it counts as checking input (any ConfigError/ValueError/... is the
    # user's). Long commands (training, sweeps) give `prepare` instead: it checks all input before Ray starts and
    # returns the work to do, whose errors are not the user's.
    run: Callable[[argparse.Namespace], int] | None = None
    prepare: Callable[[argparse.Namespace], Callable[[], int]] | None = None
    resume_hint: str = ""  # what to do after an interruption, e.g. "rerun the same command to resume"
    overrides: bool = False  # takes key=value config overrides (anywhere among its options)
    # Its Ray and MLflow output is long: the CLI announces the log file it goes to, under the storage root this
    # returns (the run's or sweep's storage.root; None: the default root).
    log_root: Callable[[argparse.Namespace], str | None] | None = None


COMMANDS: dict[str, Command] = {}


def register(command: Command) -> Command:
    """Add (or replace) a command; returns it, so a module can write COMMAND = register(Command(...))."""
    if (command.run is None) == (command.prepare is None):
        raise TypeError(f"command {command.name!r}: give it `run` or `prepare`, one of them")
    COMMANDS[command.name] = command
    return command


# Shared flags -------------------------------------------------------------------------------------------------

def output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and MLflow's own log lines here (default: in <storage.root>/logs/)")


def tracking_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./imm-runs/mlflow.db)")
    output_flags(parser)


def ray_flags(parser: argparse.ArgumentParser) -> None:
    """--address, --tracking-uri and the output flags of the commands that run on Ray and log to MLflow."""
    parser.add_argument("--address", default=None,
                        help="Ray cluster: auto, HOST:6379 or ray://HOST:10001 (default: start a local Ray)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<storage.root>/mlflow.db)")
    output_flags(parser)


def overrides_arg(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value", help=help)


def model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="URI",
                        help="runs:/RUN_ID, models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint path or s3:// URI")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load a model that holds only a pickle (promoted before safetensors): it runs code "
                             "from the file, so only for models you trust")


def check_model_store(args) -> None:
    """A model named by MLflow URI needs the tracking server: say so at once if it does not answer."""
    from orchestrator.track import tracking

    if args.model.startswith(("runs:/", "models:/")):
        tracking.check_reachable(tracking.default_tracking_uri(args.tracking_uri))


def at_least(flag: str, value: int | None, low: int) -> None:
    """`--flag: V is out of range (allowed: >= LOW)` for a flag given below its floor."""
    from imm.checks import check_value

    if value is not None:
        check_value(flag, value, low, None)


# The built-in commands in the order `imm-orch --help` lists them, then any other module in this folder.
_BUILTIN = ("train", "sweep", "submit", "status", "promote", "sample", "evaluate", "import_official", "encode", "data",
            "ui")
for _name in (*_BUILTIN, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    importlib.import_module(f"{__name__}.{_name}")
