"""A sweep on the terminal: a line per trial event, and on a terminal a bar (trials finished, the running ones'
steps, pruned, failed, the best); elsewhere (CI, `ray job logs`) a line per report instead of the bar."""

from __future__ import annotations

from imm.metrics.evaluator import QUALITY_PREFIXES
from orchestrator import terminal
from orchestrator.sweep.study import best_trials, trial_counts


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

    def update(self, study, running: list, changed: bool = True) -> None:
        """Redraw the bar; the study is read only when a trial `changed` state."""
        if self.bar is None:
            return
        if changed:
            counts = trial_counts(study)
            self.bar.n = sum(counts.get(k, 0) for k in ("complete", "pruned", "fail"))
            self._tally = [f"{counts[k]} {name}" for k, name in (("pruned", "pruned"), ("fail", "failed")) if counts.get(k)]
            best = best_trials(study)
            if len(best) == 1:
                self._tally.append(f"best {self.metric}={best[0]['values'][0]:.4g} (trial {best[0]['number']})")
        steps = ", ".join(f"t{tr.number} evaluating" if tr.board is None else f"t{tr.number} {tr.last_step}/{tr.steps}"
                          for tr in running)
        self.bar.set_postfix_str(", ".join([f"running {steps}" if running else "none running", *self._tally]))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
