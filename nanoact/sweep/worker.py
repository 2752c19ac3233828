"""A sweep worker: pops cells off the study's queue and trains them, one at a time, until the grid is done.

Each cell is trained under its lease (``nanoact.sweep.recovery``): taken before training, given back after the
trial is COMPLETE or FAILED. When the queue is empty the worker does not stop while other workers still train:
it settles the trials of workers that died and trains their cells again, and stops when nothing runs any more.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any

from nanoact import events as E
from nanoact.cluster import slurm_tags
from nanoact.errors import interrupt_reason
from nanoact.sweep import interrupt, recovery, rounds
from nanoact.sweep import state as S
from nanoact.sweep.coordinator import REQUEUE_WAIT_S, enqueue_round, requeue_lost
from nanoact.sweep.handle import StudyHandle
from nanoact.sweep.leases import hold
from nanoact.sweep.options import EventFn, WorkerContext
from nanoact.sweep.recovery import COORDINATOR
from nanoact.sweep.spec import Cell
from nanoact.tracking import schema

LEASE_CHECK_S = 0.5  # how often a training worker checks that it still holds its cell's lease


class Worker:
    def __init__(self, ctx: WorkerContext, events: EventFn | None = None, poll_s: float = 1.0):
        self.ctx, self.poll_s = ctx, poll_s
        self.events = events or (lambda ev: None)
        self.trained = self.failed = 0
        self._data: dict[tuple, Any] = {}

    def run(self) -> tuple[int, int]:
        """Train cells until none is waiting or running anywhere. Returns (trained, failed) by this worker."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        for mod in self.ctx.plugins:
            __import__(mod)
        self.handle = StudyHandle.open(self.ctx.storage_url, self.ctx.spec.study_name, self.ctx.tracking_uri)
        try:
            while True:
                interrupt.check()
                popped = self.handle.pop(rounds.optuna_axes(self.ctx.spec))
                if popped is not None:
                    self._attempt(*popped)
                    self._requeue_lost()  # a busy worker, too, hands on the cells of workers that died
                elif not self._wait_for_work():
                    return self.trained, self.failed
        finally:
            self.handle.close()

    @property
    def study(self):
        return self.handle.study

    def _emit(self, kind: type, **fields: Any) -> None:
        self.events(kind(worker=self.ctx.worker_name, **fields))

    def _wait_for_work(self) -> bool:
        """The queue is empty: True once a cell waits again (a dead worker's, re-enqueued, or the next round of a
        seed rule, enqueued here or elsewhere), False when nothing runs any more and no round is left to enqueue."""
        told, skipped = False, None  # since when enqueueing was skipped (the coordinator lease held elsewhere)
        while True:
            if self._requeue_lost():
                skipped = None
            elif skipped is None:
                skipped = time.monotonic()
            busy = self._busy()
            if not busy:  # the round is over: decide it, and enqueue the next (or find another process did)
                if self._advance() is None and skipped is None:
                    skipped = time.monotonic()
                busy = self._busy()
            if any(t.state.name == "WAITING" for t in busy):
                time.sleep(self.poll_s / 5)  # its cell may be held a moment (being trained, or checked)
                return True
            if not busy and (skipped is None or time.monotonic() - skipped > recovery.COORDINATOR_WAIT_S):
                return False
            if not told:
                self._emit(E.Idle, running=len(busy))
                told = True
            time.sleep(self.poll_s)
            interrupt.check()

    def _busy(self) -> list:
        from optuna.trial import TrialState

        return self.study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))

    def _advance(self) -> bool | None:
        """A seed rule's round, decided and the next enqueued (``rounds.advance``)."""
        spec, study = self.ctx.spec, self.study
        return rounds.advance(
            spec, study, lambda: hold(self.handle.leases, COORDINATOR, timeout=REQUEUE_WAIT_S),
            lambda spec_n: enqueue_round(spec_n, study), self.ctx.tracking_uri, self.ctx.parent_run_id,
            self.events)

    def _requeue_lost(self) -> bool:
        return requeue_lost(self.ctx.spec, self.handle, self.events)  # the cells of the current round

    def _attempt(self, trial, lease) -> None:
        """Train the popped trial's cell, holding its lease until the trial is told."""
        from optuna.trial import TrialState

        key = trial.user_attrs[S.A_GRID_KEY]
        try:
            if any(t.user_attrs.get(S.A_GRID_KEY) == key
                   for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))):
                trial.set_user_attr(S.A_DUPLICATE, "the cell was already done when this trial was popped")
                self.study.tell(trial, state=TrialState.FAIL)
                return
            self._train(trial, key, lease)
        finally:
            lease.release()

    def _config(self, trial, key: str):
        cfg = self.ctx.spec.cell_config(Cell(key, json.loads(trial.user_attrs[S.A_CELL])))
        if self.ctx.threads:
            cfg.train.threads = self.ctx.threads
        if self.ctx.device:
            cfg.train.device = self.ctx.device
        return cfg

    def _dataset(self, cfg):
        dkey = (cfg.data.corpus, cfg.data.cache_dir, cfg.data.train_fraction)
        if dkey not in self._data:
            from nanoact.data import CharDataset

            self._data[dkey] = CharDataset.from_config(*dkey)
        return self._data[dkey]

    def _train(self, trial, key: str, lease) -> None:
        from nanoact.trainer import train

        cfg = self._config(trial, key)
        trial.set_user_attr(S.A_WORKER, self.ctx.worker_name)
        tracker = self._tracker(trial, key, cfg)
        if self.ctx.train_log:
            import os

            with open(self.ctx.train_log, "a") as f:  # the trainer's own count, independent of MLflow and Optuna
                f.write(f"{key}\t{trial.number}\t{self.ctx.worker_name}:{os.getpid()}\n")
        self._emit(E.CellStarted, key=key, trial=trial.number)

        checked = [time.monotonic()]

        def on_train(ev: E.Event) -> None:
            interrupt.check()  # a signal whose exception a finalizer swallowed
            if time.monotonic() - checked[0] > LEASE_CHECK_S:  # a deleted lock file is taken again at once
                checked[0] = time.monotonic()
                if not lease.check():  # said once; telling the trial at the end finds out what became of it
                    self._emit(E.LeaseLost, key=key, trial=trial.number)
                    checked[0] = math.inf
            if isinstance(ev, E.Evaluated):
                trial.report(ev.val_loss, step=ev.iter)  # optuna-dashboard's learning curves
            self._emit(E.CellTraining, key=key, event=ev)

        try:
            res = train(cfg, data=self._dataset(cfg), tracker=tracker, progress=on_train,
                        run_name=cell_run_name(cfg, self.ctx.spec))
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (nanoact.sweep.interrupt)
            interrupt.delivered()
            self._end(trial, key, error=interrupt_reason(e), interrupted=True)
            raise
        except Exception as e:
            if interrupt.pending():  # an error caused by a signal that was swallowed (e.g. an import cut short)
                from nanoact import tracking

                reason = interrupt_reason(interrupt.exception())
                if tracker.run_id:  # the trainer ended it FAILED with that error
                    tracking.end_run(self.ctx.tracking_uri, tracker.run_id, "KILLED", reason)
                self._end(trial, key, error=reason, interrupted=True)
                interrupt.check()
            from nanoact.sweep.rdb import StorageUnreachable

            if isinstance(e, StorageUnreachable):  # telling the trial would wait as long again: stop now
                raise
            full = _storage_failure(e, self.ctx)
            if full is not None:  # every later cell would fail the same way: stop; finished cells are kept
                with contextlib.suppress(Exception):  # telling the trial may need the same full disk
                    self._end(trial, key, error=str(full), interrupted=True)
                raise full from None
            self._end(trial, key, error=_one_line(e, self.ctx))
            return
        self._end(trial, key, final={k: float(v) for k, v in res.metrics.items()}, run_id=tracker.run_id)

    def _tracker(self, trial, key: str, cfg):
        from nanoact.tracking import MlflowTracker

        note = (f"{cfg.model.name} with {cfg.model.activation}, seed {cfg.train.seed}: cell {key} of sweep "
                f"{self.ctx.spec.study_name} (Optuna trial {trial.number})")
        tags = schema.cell_tags(parent_run_id=self.ctx.parent_run_id, study=self.ctx.spec.study_name, grid_key=key,
                                trial_number=trial.number, note=note)
        return MlflowTracker(self.ctx.tracking_uri, self.ctx.experiment_id, tags={**tags, **slurm_tags()},
                             on_start=lambda run_id: trial.set_user_attr(S.A_RUN_ID, run_id), source="nanoact sweep",
                             system_metrics=self.ctx.system_metrics)

    def _end(self, trial, key: str, *, final: dict[str, float] | None = None, error: str | None = None,
             interrupted: bool = False, run_id: str | None = None) -> None:
        """Tell the trial's outcome. If recovery settled it meanwhile (our lease was lost, e.g. the database
        dropped our connection), the cell was handed on: our run must not count twice, so it becomes KILLED."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            if final is not None:
                for k, v in S.final_attrs(final).items():
                    trial.set_user_attr(k, v)
                value = final[schema.FINAL_VAL_LOSS]
                self.study.tell(trial, value if math.isfinite(value) else float("inf"))
            else:
                trial.set_user_attr(S.A_ERROR, error)
                if interrupted:
                    trial.set_user_attr(S.A_INTERRUPTED, True)
                self.study.tell(trial, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError, RuntimeError):
            self._lost(trial, key, run_id)
            return
        if final is not None:
            self.trained += 1
            self._emit(E.CellDone, key=key, metrics=final)
        elif not interrupted:
            self.failed += 1
            self._emit(E.CellFailed, key=key, error=error)

    def _lost(self, trial, key: str, run_id: str | None) -> None:
        from nanoact import tracking

        if run_id:
            tracking.end_run(self.ctx.tracking_uri, run_id, "KILLED", "finished after its trial was settled as "
                             "dead (the worker lost its lease); the cell was handed on, whose run counts")
        self._emit(E.CellLost, key=key, trial=trial.number)


def cell_run_name(cfg, spec) -> str:
    """``minigpt-gelu-s2``; a study not named after its experiment adds its name (``minigpt-gelu-s2 (mine-400)``),
    so the runs of two studies in one experiment are told apart."""
    from nanoact.trainer import default_run_name

    name = default_run_name(cfg)
    return name if spec.study_name == spec.name else f"{name} ({spec.study_name})"


def _storage_failure(e: BaseException, ctx: WorkerContext):
    """A read-only or full disk or store, as one-line error, or None."""
    from nanoact.errors import storage_error
    from nanoact.tracking_uri import display_url

    return storage_error(e, display_url(ctx.tracking_uri))


def _one_line(e: BaseException, ctx: WorkerContext) -> str:
    from nanoact.tracking_uri import redact

    return redact(" ".join(f"{type(e).__name__}: {e}".split())[:500], ctx.storage_url, ctx.tracking_uri)
