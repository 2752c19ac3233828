"""Progress output for the terminal: the ``nanoact.events`` of a training run or a sweep as status lines.

A ``Progress`` is an ``EventFn``: pass it to ``nanoact.trainer.train(progress=...)`` or ``nanoact.sweep.run``.
Showing progress must never cost a result: a rendering failure (a closed terminal, an event this renderer does
not know how to word) is logged once, as a warning, and the training goes on.
"""

from __future__ import annotations

import logging
import sys
import time

from nanoact import events as E

log = logging.getLogger(__name__)


class Progress:
    """Progress lines for long work: a rewritten status line on a terminal, periodic plain lines otherwise."""

    def __init__(self, prefix: str = "", stream=None, min_interval: float = 2.0):
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.min_interval = min_interval
        self._last = 0.0
        self._t0 = time.perf_counter()
        self._open = False
        self._failed = False

    def __call__(self, ev: E.Event) -> None:
        try:
            self.render(ev)
        except Exception as e:  # never into the trainer's callback, where it would fail the cell
            if not self._failed:
                self._failed = True
                log.warning("could not show progress (%s: %s); going on without it", type(e).__name__, e)

    def render(self, ev: E.Event) -> None:
        """One training run's events."""
        if isinstance(ev, E.Iterated):
            n = max(ev.max_iters, 1)
            self.status(f"iter {ev.iter}/{n} loss {ev.loss:.4f} lr {ev.lr:.2e} {self.eta(ev.iter, n)}")
        elif isinstance(ev, E.Evaluating):
            self.status(f"step {ev.iter}: evaluating (losses on fixed batches, predictions on the evaluation set)")
        elif isinstance(ev, E.Evaluated):
            self.line(f"step {ev.iter}: train loss {ev.train_loss:.4f}, val loss {ev.val_loss:.4f}, "
                      f"val acc {ev.val_acc:.4f}" + (f", {ev.tokens_per_s:.0f} tok/s" if ev.tokens_per_s else ""))

    def status(self, text: str) -> None:
        now = time.perf_counter()
        if self.tty:
            self.stream.write("\r\033[K" + self.prefix + text)
            self.stream.flush()
            self._open = True
        elif now - self._last >= self.min_interval:
            self.stream.write(self.prefix + text + "\n")
            self.stream.flush()
            self._last = now

    def line(self, text: str) -> None:
        if self._open:
            self.stream.write("\r\033[K")
            self._open = False
        self.stream.write(self.prefix + text + "\n")
        self.stream.flush()

    def eta(self, done: float, total: float) -> str:
        elapsed = time.perf_counter() - self._t0
        if done <= 0:
            return "ETA --"
        rest = elapsed * (total - done) / done
        return f"ETA {fmt_secs(rest)}"


def fmt_secs(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _hw(x: float | None) -> str:
    return "±inf" if x is None or x == float("inf") else f"±{x:.2g}"


def round_line(ev: E.RoundDecided, per_cell_s: float | None = None) -> str:
    """``round 2: 3 -> 5 seeds; widest final_val_loss ±0.007 (target ±0.005); pd_tv ±0.0015 ✓; next: 2 more
    seeds (4 cells, ~3m00s)``: the widest widened 95% half-width of each targeted metric against its target."""
    seeds = f"{ev.previous_seeds} -> {ev.seeds} seeds" if ev.previous_seeds else f"{ev.seeds} seeds"
    parts = []
    for i, (k, t) in enumerate(ev.targets.items()):
        w = _hw(ev.widest.get(k))
        parts.append(f"{'widest ' if i == 0 else ''}{k} {w} " + ("✓" if ev.met.get(k) else f"(target ±{t:g})"))
    if ev.stop:
        nxt = f"stop: {ev.reason}"
    else:
        eta = f", ~{fmt_secs(per_cell_s * ev.new_cells)}" if per_cell_s else ""
        nxt = f"next: {ev.next_seeds - ev.seeds} more seeds ({ev.new_cells} cells{eta})"
    return f"round {ev.round}: {seeds}; {'; '.join(parts)}; {nxt}"


class SweepProgress(Progress):
    """Cells done/total, the current cell's iteration, and an ETA for the whole sweep."""

    def __init__(self, stream=None):
        super().__init__(stream=stream)
        self.total = self.done = self.todo = self.finished_here = 0
        self.cell_t0 = time.perf_counter()
        self.cell_times: list[float] = []

    def sweep_eta(self, frac_current: float = 0.0) -> str:
        if self.cell_times:
            per = sum(self.cell_times) / len(self.cell_times)
        elif frac_current > 0.02:  # no cell finished yet: extrapolate from the current one
            per = (time.perf_counter() - self.cell_t0) / frac_current
        else:
            return "sweep ETA --"
        left = self.todo - self.finished_here - frac_current
        return f"sweep ETA {fmt_secs(max(left, 0) * per)}"

    def render(self, ev: E.Event) -> None:
        if isinstance(ev, E.Planned):
            self.total, self.done, self.todo = ev.total, ev.done, ev.todo
            elsewhere = f", {ev.running} running in other workers" if ev.running else ""
            self.line(f"{self.total} cells: {self.done} done already, {self.todo} to run{elsewhere}")
        elif isinstance(ev, E.CellStarted):
            self.cell_t0 = time.perf_counter()
            self.line(f"[{self.done + 1}/{self.total}] {ev.key} (trial {ev.trial})")
        elif isinstance(ev, E.CellTraining):
            self._cell_training(ev.event)
        elif isinstance(ev, E.CellDone):
            self.done += 1
            self.finished_here += 1
            self.cell_times.append(time.perf_counter() - self.cell_t0)
            m = ev.metrics
            self.line(f"[{self.done}/{self.total}] done {ev.key}: val loss {m['final/val_loss']:.4f}, "
                      f"val acc {m['final/val_acc']:.4f}, {m['time/wall_s']:.1f} s | {self.sweep_eta()}")
        elif isinstance(ev, E.CellFailed):
            self.finished_here += 1
            self.line(f"FAILED {ev.key}: {ev.error}")
        elif isinstance(ev, E.RoundAnalysing):
            self.line(f"round {ev.round} done ({ev.seeds} seeds per activation): interim analysis")
        elif isinstance(ev, E.RoundDecided):
            per = sum(self.cell_times) / len(self.cell_times) if self.cell_times else None
            self.line(round_line(ev, per))
            self.total += ev.new_cells
            self.todo += ev.new_cells
        else:
            self._note(ev)

    def _cell_training(self, ev: E.TrainEvent) -> None:
        at = f"[{self.done + 1}/{self.total}]"
        if isinstance(ev, E.Iterated):
            frac = ev.iter / max(ev.max_iters, 1)
            self.status(f"{at} iter {ev.iter}/{ev.max_iters} loss {ev.loss:.4f} | {self.sweep_eta(frac)}")
        elif isinstance(ev, E.Evaluating):
            self.status(f"{at} step {ev.iter}: evaluating")
        elif isinstance(ev, E.Evaluated):
            self.status(f"{at} step {ev.iter}: val loss {ev.val_loss:.4f}")

    def _note(self, ev: E.Event) -> None:
        if isinstance(ev, E.Warned):
            self.line(f"warning: {ev.detail}")
        elif isinstance(ev, E.Note):
            self.line(ev.detail)
        elif isinstance(ev, E.Idle):
            self.line(f"queue empty; waiting for {ev.running} cell(s) running in other workers")
        elif isinstance(ev, E.LeaseLost):
            self.line(f"{ev.key}: another process holds this cell's lease now (was its lock file deleted?); "
                      "it may settle this run as dead")
        elif isinstance(ev, E.CellLost):
            self.line(f"{ev.key}: its trial was settled as dead meanwhile; this run does not count")
        elif isinstance(ev, E.WorkerDied):
            self.line(f"worker {ev.worker} exited with code {ev.exitcode}")
