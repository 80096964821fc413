"""One driver per sweep: a lease held in the sweep's Optuna study and renewed by a heartbeat.

Two drivers on one sweep would each take the other's live RUNNING trials for crashed ones and relaunch them:
the same Ray Train run trained twice into one checkpoint folder and one MLflow run. The study is the only
record every driver of a sweep shares (a journal file or an RDB, wherever it runs), so the lease lives there,
as a study attribute: who holds it (host, pid) and when it was last renewed. Optuna's own heartbeat marks
stale *trials* failed and exists for RDB storages only; this guards the sweep as a whole, on any storage.

A driver that dies without releasing (SIGKILL, `ray job stop` when closing took longer than Ray's grace) leaves
its lease behind. On the machine it ran on (a Ray job's driver runs on the head node, so a resubmitted one does
too) the next driver sees that the holder's process is gone and takes over at once; from anywhere else it
waits until the lease expires, `lease_s()` seconds after its last renewal.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

from imm.config import ConfigError

LEASE_ATTR = "driver_lease"


def lease_s() -> float:
    """How long a lease lives without renewal (IMM_SWEEP_LEASE_S, default 60 s); renewed every quarter of that."""
    return float(os.environ.get("IMM_SWEEP_LEASE_S", "60"))


def _process(pid: int) -> dict:
    """Who `pid` is on this machine: host, PID namespace and kernel start time (None where /proc has no answer),
    so that a reused pid or a process in another container is not taken for the lease's holder."""
    def read(path: str, parse) -> str | None:
        try:
            return parse(path)
        except (OSError, IndexError):
            return None

    return {"host": socket.gethostname(), "pid": pid,
            "pidns": read("/proc/self/ns/pid", os.readlink),
            "started": read(f"/proc/{pid}/stat", lambda p: Path(p).read_text().rsplit(")", 1)[1].split()[19])}


def holder_is_gone(lease: dict) -> bool:
    """True only when the holder provably died: it ran on this host, in this PID namespace, and its process no
    longer exists (or the pid now belongs to a later process)."""
    here = _process(lease["pid"])
    if lease["host"] != here["host"] or lease.get("pidns") is None or lease.get("pidns") != here["pidns"]:
        return False  # another machine or container: only the heartbeat can tell
    return here["started"] is None or here["started"] != lease.get("started")


def live_lease(study) -> dict | None:
    """The lease on the sweep if it was renewed less than lease_s() ago by a driver not known to be dead."""
    lease = study.user_attrs.get(LEASE_ATTR)
    if not lease or time.time() - lease["renewed"] >= lease_s() or holder_is_gone(lease):
        return None
    return lease


def refuse_if_held(study, name: str, mine: str | None = None) -> None:
    lease = live_lease(study)
    if lease and lease["id"] != mine:
        age = time.time() - lease["renewed"]
        raise ConfigError(f"--resume: sweep {name!r} is being run by pid {lease['pid']} on {lease['host']} (its lease "
                          f"was renewed {age:.0f}s ago); stop that driver, or if it died, rerun after its lease expires "
                          f"(within {lease_s():.0f}s)")


class Lease:
    """The right to run one sweep, taken from its study and kept alive by a daemon thread until released."""

    def __init__(self, study, name: str):
        self.study, self.name = study, name
        self.id = uuid.uuid4().hex
        self.me = _process(os.getpid())
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _write(self) -> None:
        self.study.set_user_attr(LEASE_ATTR, {"id": self.id, **self.me, "renewed": time.time()})

    def acquire(self) -> Lease:
        refuse_if_held(self.study, self.name)
        self._write()
        time.sleep(0.5)  # two drivers writing at once: the one written last holds it, the other sees that and yields
        refuse_if_held(self.study, self.name, mine=self.id)
        self.thread = threading.Thread(target=self._renew, daemon=True, name="sweep-lease")
        self.thread.start()
        return self

    def _renew(self) -> None:
        while not self.stop.wait(lease_s() / 4):
            try:
                self._write()
            except Exception:  # the storage is briefly unreachable: try again at the next beat
                pass

    def release(self) -> None:
        """Stop renewing and clear the lease (again: a no-op); best effort, since an unreleased lease expires."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        try:
            lease = self.study.user_attrs.get(LEASE_ATTR)
            if lease and lease["id"] == self.id:
                self.study.set_user_attr(LEASE_ATTR, None)
        except Exception:  # the storage failed: that error is the one to show
            pass
