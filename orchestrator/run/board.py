"""The progress board: a Ray actor rank 0 pushes its reports to and the driver drains (to print progress, and in a
sweep to feed the pruner).

This module imports nothing heavy: the board's own process imports it, and a sweep starts a board per trial.
Pushes do not wait (an actor runs one caller's calls in order); the worker waits once, for its last push, before
it ends, so that nothing it pushed is lost.
"""

from __future__ import annotations


class ProgressBoard:
    """`new_board()` places it on the driver's node: on a node that dies it would take the progress with it (and
    rank 0 would wait on every push) while the run itself goes on."""

    def __init__(self):
        self.items: list[dict] = []

    def push(self, item: dict) -> None:
        self.items.append(item)

    def drain(self) -> list[dict]:
        items, self.items = self.items, []
        return items


def new_board():
    import ray

    from orchestrator.infra.cluster import driver_node_affinity

    return ray.remote(num_cpus=0, scheduling_strategy=driver_node_affinity())(ProgressBoard).remote()


class Pusher:
    """A worker's side of the board: push without waiting; `flush()` waits for the last push. Best effort: the
    driver's progress display must never fail a training run."""

    def __init__(self, board):
        self.board, self.last = board, None

    def push(self, item: dict) -> None:
        try:
            self.last = self.board.push.remote(item)
        except Exception:
            pass

    def flush(self, timeout: float = 10) -> None:
        import ray

        try:
            if self.last is not None:
                ray.get(self.last, timeout=timeout)
        except Exception:
            pass
