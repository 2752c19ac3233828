"""Progress events are typed, cross a ``spawn`` process boundary intact, and showing them never fails a cell."""

from __future__ import annotations

import dataclasses
import inspect
import io
import logging
import multiprocessing as mp

import pytest
from conftest import tiny_overrides

from nanoact import events as E
from nanoact.config import RunConfig, apply_overrides
from nanoact.progress import Progress, SweepProgress
from nanoact.trainer import train

EVAL = E.Evaluated(10, 20, 2.0, 2.1, 0.3, 0.25, 1e-3, 5000.0)
SAMPLES = [
    E.Iterated(10, 20, 2.5, 1e-3), E.Evaluating(10, 20), EVAL,
    E.Planned(4, 1, 3, 0, ("settled trial 2",)), E.Recovered("r"), E.Waiting("w"), E.Notice("n"), E.Warned("x"),
    E.CellStarted("w0", "relu/s1", 3), E.CellTraining("w0", "relu/s1", EVAL),
    E.CellDone("w0", "relu/s1", {"final/val_loss": 2.0, "final/val_acc": 0.3, "time/wall_s": 1.5}),
    E.CellFailed("w0", "relu/s1", "DivergenceError: loss diverged"), E.Idle("w0", 2), E.LeaseLost("w0", "k", 1),
    E.CellLost("w0", "k", 1), E.WorkerDied("nanoact-worker-1", -9), E.WorkerFailed("w1", "no database"),
    E.WorkerEnded("w1", 2, 0), E.RoundAnalysing(1, 3),
    E.RoundDecided(1, 0, 3, {"final_val_loss": 0.0071}, {"final_val_loss": 0.005}, {"final_val_loss": False}, False,
                   "", 5, 4),
]


def test_every_event_class_is_a_frozen_dataclass_with_a_sample():
    classes = {c for _, c in inspect.getmembers(E, inspect.isclass)
               if c.__module__ == E.__name__ and c not in (E.Note, E.OfCell, E.OfTrial)}
    assert classes == {type(ev) for ev in SAMPLES}
    for ev in SAMPLES:
        assert dataclasses.is_dataclass(ev)
        with pytest.raises(dataclasses.FrozenInstanceError):
            ev.worker = "other"  # type: ignore[misc]


def test_events_cross_a_spawn_process_boundary_intact():
    """A spawned process unpickles the events (importing nanoact.events afresh) and sends them back."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=q.put, args=(SAMPLES,))
    p.start()
    back = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0 and back == SAMPLES


def test_evaluated_logs_the_schemas_metric_names():
    assert EVAL.metrics() == {"train/loss": 2.0, "val/loss": 2.1, "train/acc": 0.3, "val/acc": 0.25, "lr": 1e-3,
                              "tokens_per_s": 5000.0}


def test_the_sweep_renderer_words_every_event():
    out = io.StringIO()
    show = SweepProgress(stream=out)
    show.min_interval = 0.0
    for ev in SAMPLES:
        show(ev)
    text = out.getvalue()
    for words in ("4 cells: 1 done already, 3 to run", "[2/4] relu/s1 (trial 3)", "step 10: val loss 2.1000",
                  "[2/4] done relu/s1: val loss 2.0000", "FAILED relu/s1: DivergenceError", "warning: x",
                  "queue empty; waiting for 2 cell(s)", "worker nanoact-worker-1 exited with code -9",
                  "round 1 done (3 seeds per activation): interim analysis",
                  "round 1: 3 seeds; widest final_val_loss ±0.0071 (target ±0.005); next: 2 more seeds (4 cells"):
        assert words in text, text
    assert not show._failed


class _ClosedTerminal(io.StringIO):
    def write(self, s):
        raise OSError(5, "Input/output error")


def test_a_rendering_failure_is_one_warning_and_never_fails_the_cell(tiny_data, caplog):
    """Progress output that raises (a closed terminal here) inside the trainer's callback: the run finishes with
    the same result as without progress, and one warning says so."""
    cfg = apply_overrides(RunConfig(), tiny_overrides(**{"train.max_iters": 20, "train.eval_interval": 10}))
    quiet = train(cfg, data=tiny_data)
    with caplog.at_level(logging.WARNING, logger="nanoact.progress"):
        shown = train(cfg, data=tiny_data, progress=Progress(stream=_ClosedTerminal()))
    losses = [[(k, v) for k, v in row.items() if k != "tokens_per_s"] for row in quiet.history]
    assert [[(k, v) for k, v in row.items() if k != "tokens_per_s"] for row in shown.history] == losses
    (record,) = [r for r in caplog.records if r.name == "nanoact.progress"]
    assert "could not show progress (OSError" in record.getMessage()


def test_a_malformed_event_is_logged_not_raised(caplog):
    show = SweepProgress(stream=io.StringIO())
    with caplog.at_level(logging.WARNING, logger="nanoact.progress"):
        show(E.CellDone("w0", "k", {}))  # metrics without final/val_loss
        show(E.CellDone("w0", "k", {}))
    assert [r.levelname for r in caplog.records if r.name == "nanoact.progress"] == ["WARNING"]
