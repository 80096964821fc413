"""A run's progress on the driver: the line printed when Ray Train restarts the workers, and the printer that
shows what rank 0 pushed to the board (`orchestrator.run.board`): a bar on a terminal, a line per report elsewhere.

A single run's driver pumps its board into a `ProgressPrinter`; a sweep drains its one board for all its trials
itself (`orchestrator.sweep.outcomes`), for the pruner as well as the terminal.
"""

from __future__ import annotations

import math
import threading
import time

from imm.metrics.evaluator import QUALITY_PREFIXES
from imm.training.loop import progress_line
from orchestrator import terminal

DEATH_ERRORS = ("WorkerHealthCheckFailedError", "ActorDiedError", "ActorUnavailableError", "RayActorError",
                "NodeDiedError")  # Ray's errors for a worker process or node that is gone


class RestartNotice:
    """The one line a driver prints when Ray Train restarts a run's workers: which rank died, on which node, after
    which step, the checkpoint it resumes from and the attempt, out of 1 + trainer.max_failures."""

    def __init__(self, max_failures: int):
        self.attempts = 1 + max_failures
        self.attempt = 0
        self.nodes: list[str] = []  # the current group's node per rank
        self.failure: dict[int, str] = {}  # rank -> error, from the controller's failure callback
        self.last_step: int | None = None

    def __call__(self, item: dict) -> str | None:
        """Feed a board item; the line to print, if any."""
        event = item.get("event")
        if event == "failed":
            self.failure = {int(r): e for r, e in item["ranks"].items()}
            return None
        if event not in ("started", "resumed"):
            self.last_step = int(item["step"]) if "step" in item else self.last_step
            return None
        self.attempt += 1
        old_nodes, self.nodes = self.nodes, list(item.get("nodes", []))
        failure, self.failure = self.failure, {}
        where = "resumed from the checkpoint at step" if event == "resumed" else "started over from step"
        if self.attempt == 1:
            return f"resumed from the checkpoint at step {item['step']}" if event == "resumed" else None
        # A dead worker fails its peers too (e.g. gloo's "Connection reset by peer"): name the dead ones if known.
        dead = {r: e for r, e in failure.items() if e.startswith(DEATH_ERRORS)} or failure
        if not dead and len(old_nodes) == 1:  # a one-worker trial's task, which Ray reruns only when it dies
            dead = {0: "its process or its node died"}
        died = "; ".join(f"rank {r}" + (f" on {old_nodes[r]}" if r < len(old_nodes) else "") + f" ({e})"
                         for r, e in sorted(dead.items())) or "a worker died"
        after = f" after step {self.last_step}" if self.last_step is not None else ""
        return (f"workers restarted, attempt {self.attempt} of {self.attempts}: {died}{after}; "
                f"{where} {item['step']}")


def failure_callback(slot):
    """A Ray Train callback, run by the run's controller, that tells the run's board `Slot` which ranks failed and
    why."""
    from ray.train import UserCallback

    class TellFailures(UserCallback):
        def after_exception(self, run_context, worker_exceptions) -> None:
            ranks = {r: first_line(e) for r, e in worker_exceptions.items()}
            try:
                slot.push({"event": "failed", "ranks": ranks})
            except Exception:  # progress is best effort
                pass

    return TellFailures()


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


class ProgressPrinter:
    """A run's progress on the driver: on a terminal a bar (step, loss, samples/s, ETA) with a line per
    evaluation; elsewhere one line per rank-0 report. A line when the workers restart."""

    def __init__(self, total_steps: int, max_failures: int = 0, stream=None):
        self.total, self.stream = total_steps, stream or terminal.out()
        self.t0 = self.step0 = None
        self.first_item_at: float | None = None  # perf_counter of the first item: workers are up by then
        self.last_step: int | None = None
        self.restarts = RestartNotice(max_failures)
        self.bar = None

    def __call__(self, item: dict) -> None:
        line = self.restarts(item)
        if line:
            terminal.say(line, self.stream)
        if item.get("event"):  # a worker group started (the first, or a restarted one), or one failed
            self.first_item_at = self.first_item_at or time.perf_counter()
            self.t0 = self.step0 = None
            if item["event"] != "failed" and self.bar is None:
                self.bar = terminal.bar(self.total, "train", "step", self.stream, initial=int(item["step"]))
            return
        self.first_item_at = self.first_item_at or time.perf_counter()
        step = self.last_step = int(item["step"])
        now = item.get("time") or time.time()  # when rank 0 reported: items arrive here in batches
        if self.t0 is None:
            self.t0, self.step0 = now, step
        rate = (step - self.step0) / (now - self.t0) if now > self.t0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else math.nan
        if self.bar is None:
            terminal.say(progress_line(item, self.total, eta), self.stream)
            return
        self.bar.n = step
        self.bar.set_postfix_str(f"loss {item['train/loss']:.4g}, {item['throughput/samples_per_s']:,.0f} samples/s")
        if any(k.startswith(QUALITY_PREFIXES) for k in item):
            terminal.say(progress_line(item, self.total, eta), self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def pump(slot, printer: ProgressPrinter, stop: threading.Event) -> None:
    """Drain the run's board `Slot` into the printer every half second until `stop` is set (then once more)."""
    import ray

    while True:
        stopping = stop.wait(0.5)
        try:
            items = ray.get(slot.drain(), timeout=30)
        except Exception:  # progress is best effort: never let it break a run
            items = []
        for item in items:
            printer(item)
        if stopping:
            return
