"""Helpers for tests that start real servers on 127.0.0.1."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, proc, log: Path | None = None, timeout: float = 90) -> None:
    """Until `url`/health answers OK; fails with the server's log if its process ends or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = log.read_text()[-2000:] if log and log.is_file() else ""
            raise AssertionError(f"the server at {url} did not start:\n{tail}")
        time.sleep(0.5)
