"""The progress board: a Ray actor rank 0 pushes its reports to and the driver drains (to print progress, and in a
sweep to feed the pruner).

One board serves a whole sweep: each trial reports under its own key (a `Slot`), and the driver drains every
trial's reports in one call (`drain_all`). A board per trial would start an actor process per trial, and its first
drain would wait for that process; polling each would cost the driver a call per running trial per second.

This module imports nothing heavy: the board's own process imports it. Pushes do not wait (an actor runs one
caller's calls in order); the worker waits once, for its last push, before it ends, so that nothing it pushed is
lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ProgressBoard:
    """`new_board()` places it on the driver's node: on a node that dies it would take the progress with it (and
    rank 0 would wait on every push) while the run itself goes on."""

    def __init__(self):
        self.items: dict[Any, list[dict]] = {}

    def push(self, item: dict, key=None) -> None:
        self.items.setdefault(key, []).append(item)

    def drain(self, key=None) -> list[dict]:
        return self.items.pop(key, [])

    def drain_all(self) -> dict[Any, list[dict]]:
        items, self.items = self.items, {}
        return items


def new_board():
    import ray

    from orchestrator.infra.cluster import driver_node_affinity

    return ray.remote(num_cpus=0, scheduling_strategy=driver_node_affinity())(ProgressBoard).remote()


@dataclass(frozen=True)
class Slot:
    """One run's place on a board (a sweep's trial number; None for a run of its own): what its workers and
    callbacks are handed."""

    board: Any  # the ProgressBoard actor
    key: Any = None

    def push(self, item: dict):
        return self.board.push.remote(item, self.key)

    def drain(self):
        return self.board.drain.remote(self.key)


class Pusher:
    """A worker's side of the board: push without waiting; `flush()` waits for the last push. Best effort: the
    driver's progress display must never fail a training run."""

    def __init__(self, slot: Slot):
        self.slot, self.last = slot, None

    def push(self, item: dict) -> None:
        try:
            self.last = self.slot.push(item)
        except Exception:
            pass

    def flush(self, timeout: float = 10) -> None:
        import ray

        try:
            if self.last is not None:
                ray.get(self.last, timeout=timeout)
        except Exception:
            pass
