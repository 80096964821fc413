"""The one rule for the processes a command starts: they end with it.

A child (the MLflow UI's `mlflow server`, which starts its own workers) runs in its own process group; when the
command ends, however it ends (return, Ctrl-C, SIGTERM from `kill` or a supervisor, SIGHUP when its terminal
closes), the whole group is stopped: SIGTERM, then SIGKILL for what is left after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

GRACE_S = 10.0


class Stopped(Exception):
    """The command was told to stop (SIGTERM or SIGHUP); `code` is the conventional exit status, 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextmanager
def owned_process(cmd: list[str], **popen) -> Iterator[subprocess.Popen]:
    """Popen(cmd) in its own process group, stopped with everything it started when the block exits; SIGTERM and
    SIGHUP raise Stopped in the block meanwhile (Ctrl-C reaches it as KeyboardInterrupt, not the child's group)."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen)
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield proc
    finally:
        try:
            stop_group(proc)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def stop_group(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """SIGTERM to the child's process group, SIGKILL to what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(proc.pid):
            return
        grace = 2.0  # the leader is gone; its workers get a short while, then SIGKILL


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
