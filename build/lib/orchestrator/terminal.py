"""The terminal shows this project's progress and messages; Ray's and MLflow's own log lines go to a log file.

Ray writes from C++ (its core worker's and raylet's glog lines), from Python loggers and from threads that
print, to whatever file descriptors 1 and 2 are; MLflow and Optuna log through Python's logging to
sys.stderr; child processes inherit the descriptors. Rather than chase each library's handlers, `quiet()`
points descriptors 1 and 2 (so sys.stdout, sys.stderr and every child) at the log file and keeps duplicates
of the terminal's for our own output: `out()` and `err()`. Without `quiet()` (tests, `--verbose`, use as a
library) they are sys.stdout and sys.stderr.

Progress bars (tqdm) are drawn only on a terminal; elsewhere (CI, `ray job logs`) the same progress comes as
plain lines. `say()` prints a line above any bar.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

_out: TextIO | None = None
_err: TextIO | None = None
_log: Path | None = None


def out() -> TextIO:
    return _out or sys.stdout


def err() -> TextIO:
    return _err or sys.stderr


def log_path() -> Path | None:
    """The log file of this process's library output, while `quiet()` is on."""
    return _log


def is_quiet() -> bool:
    return _log is not None


@contextmanager
def quiet(log_file: Path) -> Iterator[Path]:
    """Send descriptors 1 and 2 to `log_file` (appended); `out()`/`err()` keep the terminal."""
    global _out, _err, _log
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    _out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    _err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _log = log_file
    try:
        yield log_file
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for stream in (_out, _err):
            stream.close()
        _out = _err = _log = None


def bar(total: int, desc: str, unit: str, stream: TextIO, initial: int = 0):
    """A tqdm progress bar on `stream` when it is a terminal, else None (the caller prints lines instead)."""
    if not _isatty(stream):
        return None
    from tqdm import tqdm

    try:
        size = os.get_terminal_size(stream.fileno())
        sized = size.columns > 0 and size.lines > 0  # a bare pty reports 0 x 0, and tqdm then hides its bars
    except (OSError, ValueError, AttributeError):
        sized = False
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=sized,
                ncols=None if sized else 120, nrows=None if sized else 24, leave=True,
                bar_format="{desc} |{bar:24}| {n_fmt}/{total_fmt} {unit}s [{elapsed}<{remaining}{postfix}]")


def say(line: str, stream: TextIO) -> None:
    """A line on `stream`, above any progress bar drawn there."""
    from tqdm import tqdm

    tqdm.write(line, file=stream)
    stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def root_cause(e: BaseException) -> str:
    """The innermost 'SomeError: message' line of an error (Ray wraps a worker's error twice): the one line a user
    is shown for a failed trial, run or command."""
    import re

    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[\w.]*(Error|Exception|Interrupt)\b.*:", ln)]
    if lines:
        return lines[-1][:1000]
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:1000]
