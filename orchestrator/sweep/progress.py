"""A sweep on the terminal: a line per trial event, and on a terminal a bar (trials finished, the running ones'
steps, pruned, failed, the best); elsewhere (CI, `ray job logs`) a line per report instead of the bar."""

from __future__ import annotations

from imm.metrics.evaluator import QUALITY_PREFIXES
from orchestrator import terminal


class SweepProgress:
    def __init__(self, name: str, metric: str, stream=None):
        self.name, self.metric = name, metric
        self.stream = stream or terminal.out()
        self.bar, self._tally = None, []

    def say(self, line: str) -> None:
        terminal.say(line, self.stream)

    def open(self, trials: int, done: int) -> None:
        self.bar = terminal.bar(trials, f"sweep {self.name}", "trial", self.stream, initial=done)

    def reported(self, tr, item: dict) -> None:
        """A training trial's report (step, loss, quality): a line where there is no bar to show it."""
        if self.bar is None:
            quality = " ".join(f"{k}={v:.4g}" for k, v in item.items() if k.startswith(QUALITY_PREFIXES))
            self.say(f"trial {tr.number} step {int(item['step'])}/{tr.steps}  loss {item['train/loss']:.4g}  {quality}")

    def update(self, running: list, tally=None) -> None:
        """Redraw the bar: the running trials' steps, and with a `Tally` (a trial changed state) the counts and the
        best."""
        if self.bar is None:
            return
        if tally is not None:
            counts = tally.counts
            self.bar.n = tally.finished
            self._tally = [f"{counts[k]} {name}" for k, name in (("pruned", "pruned"), ("fail", "failed")) if counts.get(k)]
            if tally.best is not None:
                self._tally.append(f"best {self.metric}={tally.best[1]:.4g} (trial {tally.best[0]})")
        steps = ", ".join(f"t{tr.number} evaluating" if tr.board is None else f"t{tr.number} {tr.last_step}/{tr.steps}"
                          for tr in running)
        self.bar.set_postfix_str(", ".join([f"running {steps}" if running else "none running", *self._tally]))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
