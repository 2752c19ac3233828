"""Fault injection for the kill-stage tests, loaded into a sweep with ``--plugin kill_plugin``.

``NANOACT_KILL_AT`` says where the worker SIGKILLs itself, the first time it gets there:
- ``popped``: right after a trial is taken off the queue (and its cell's lease with it), before anything else;
- ``finished``: after the cell's MLflow run is FINISHED, before its trial is COMPLETE;
- ``full``: not a kill: from the start of a cell's run on, every MLflow write fails as sqlite does on a full
  disk, so the worker can neither log to its run nor end it (the Optuna journal still takes its short appends).
- ``created``: in the coordinator step, right after the study is created, before its attrs are set;
- ``parent``: in the coordinator step, right after the parent run is created, before the study records it;
- ``round``: in a worker, after a seed rule's round is recorded in the study, before the next round is enqueued
  (the coordinator lease held);
- ``journal_full``: not a kill: an append to the Optuna journal writes half its bytes and fails as on a full disk.
``NANOACT_RECONNECT_S`` shortens how long a worker waits for a lost database (60 s).
``NANOACT_COORDINATOR_WAIT_S`` shortens the longest wait for the coordinator lease (60 s).
``NANOACT_KILL_AFTER`` (default 0) lets that many cells (appends, for ``journal_full``) pass first.
"""

import os
import signal

from nanoact.sweep import worker
from nanoact.sweep.handle import StudyHandle

_STAGE = os.environ.get("NANOACT_KILL_AT", "")
if os.environ.get("NANOACT_COORDINATOR_WAIT_S"):
    from nanoact.sweep import recovery

    recovery.COORDINATOR_WAIT_S = float(os.environ["NANOACT_COORDINATOR_WAIT_S"])
if os.environ.get("NANOACT_RECONNECT_S"):
    from nanoact.sweep import rdb

    rdb.RECONNECT_S = float(os.environ["NANOACT_RECONNECT_S"])
_seen = [int(os.environ.get("NANOACT_KILL_AFTER", "0"))]


def _due() -> bool:
    _seen[0] -= 1
    return _seen[0] < 0


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_pop = StudyHandle.pop
_end = worker.Worker._end


def pop_then_die(self, axes):
    popped = _pop(self, axes)
    if popped is not None and _due():
        _die()
    return popped


def end_but_die_first(self, trial, key, **kw):
    if kw.get("final") is not None and _due():
        _die()
    return _end(self, trial, key, **kw)


def _create_then_die() -> None:
    import optuna

    create = optuna.create_study

    def create_study(*a, **kw):
        study = create(*a, **kw)
        if _due():
            _die()
        return study

    optuna.create_study = create_study


def _parent_then_die() -> None:
    from nanoact import tracking

    create = tracking.create_parent_run

    def create_parent_run(*a, **kw):
        run_id = create(*a, **kw)
        if _due():
            _die()
        return run_id

    tracking.create_parent_run = create_parent_run


if _STAGE == "created":
    _create_then_die()
elif _STAGE == "parent":
    _parent_then_die()
elif _STAGE == "popped":
    StudyHandle.pop = pop_then_die
elif _STAGE == "finished":
    worker.Worker._end = end_but_die_first
elif _STAGE == "round":
    _enqueue_round = worker.enqueue_round

    def enqueue_round_but_die_first(spec_n, study, **kw):  # called by rounds.advance after its record
        if _due():
            _die()
        return _enqueue_round(spec_n, study, **kw)

    worker.enqueue_round = enqueue_round_but_die_first


def _fill_the_store() -> None:
    import sqlite3

    import sqlalchemy
    from mlflow import MlflowClient

    from nanoact.tracking import MlflowTracker

    full = [False]
    start = MlflowTracker.start

    def start_then_fill(self, run_name, tags):
        start(self, run_name, tags)
        full[0] = full[0] or _due()

    def failing(orig):
        def write(self, *a, **kw):
            if full[0]:  # how MLflow's SQLAlchemy store raises SQLITE_FULL
                raise sqlalchemy.exc.OperationalError("UPDATE runs SET ...", {},
                                                      sqlite3.OperationalError("database or disk is full"))
            return orig(self, *a, **kw)
        return write

    MlflowTracker.start = start_then_fill
    for name in ("log_batch", "log_metric", "set_tag", "set_terminated", "log_artifact", "log_text", "log_inputs"):
        setattr(MlflowClient, name, failing(getattr(MlflowClient, name)))


if _STAGE == "full":
    _fill_the_store()


def _fill_the_journal() -> None:
    """``journal_full``: after ``NANOACT_KILL_AFTER`` appends, an append to the Optuna journal writes half its
    bytes and fails as a full disk does (the simulation of a full tmpfs, where one cannot be mounted)."""
    import errno

    from optuna.storages.journal import JournalFileBackend

    def append_logs(self, logs):
        if not _due():
            return _append(self, logs)
        import json

        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with open(self._file_path, "ab") as f:
            f.write(text[: len(text) // 2].encode())
        raise OSError(errno.ENOSPC, "No space left on device")

    _append = JournalFileBackend.append_logs
    JournalFileBackend.append_logs = append_logs


if _STAGE == "journal_full":
    _fill_the_journal()
