"""Liveness and recovery: how a sweep knows that a cell's worker died, and what it does then.

**One mechanism: a lease per cell that the operating system (or the database server) releases when its holder
dies.** A worker takes the lease of the cell it pops *before* it trains and gives it back only *after* its trial is
COMPLETE or FAILED. A RUNNING trial whose cell lease anyone can take is therefore dead: its worker was killed
(``kill -9``, out of memory, a lost machine) at some point between popping the trial and finishing it. Nothing
depends on process ids or host names, so PID namespaces (a sweep running as PID 1 in a container), recycled
PIDs and renamed hosts change nothing. The lease is named by the study and the cell, never recorded on the trial,
so there is no window between popping a trial and "registering" its worker.

- Storage in a local file (a journal file, ``sqlite:///``): ``flock`` on ``<storage>.leases/<hash>.lock``.
  The kernel drops the lock the moment the process dies.
- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a connection held for the lease. The
  server drops it when the connection closes, i.e. when the process dies; the connection's TCP keepalives
  (``tcp_keepalives_*``, about 25 s) also drop it when a whole machine vanishes.

Recovery of a dead trial (``recover``) takes the cell's lease itself, so two recoverers never act on one trial,
and then: if the trial's MLflow run FINISHED (the worker died between the run's end and the trial's COMPLETE),
the trial is **adopted**: completed with that run's final val loss, not retrained. Otherwise the run becomes
KILLED with the reason, and the trial FAIL with ``nanoact.interrupted``, so the cell runs again. A worker that
pops a trial and then finds that recovery failed it meanwhile (or that the cell is taken) drops it untrained.

A worker stopped by a full or read-only store tells its trial interrupted (a short journal append may still fit)
but may not be able to end its MLflow run; ``close_interrupted`` KILLs such a run before its cell runs again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable

from nanoact.sweep import state as S
from nanoact.sweep.storage import get_trial, is_rdb_url, journal_path, set_trial_attrs

COORDINATOR = "__coordinator__"  # the lease that serialises coordinator steps (study, parent run, enqueueing)
MAX_DEATHS = 3  # a cell interrupted this often is left to the next `nanoact sweep` (e.g. it runs out of memory)


def _digest(study: str, name: str) -> bytes:
    return hashlib.sha256(f"{study}\0{name}".encode()).digest()


class Lease:
    def __init__(self, release: Callable[[], None]):
        self._release = release

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


class FileLeases:
    """Leases as ``flock`` locks on files in one folder beside the storage."""

    def __init__(self, folder: Path, study: str):
        self.folder, self.study = folder, study
        folder.mkdir(parents=True, exist_ok=True)

    def try_hold(self, name: str) -> Lease | None:
        path = self.folder / f"{_digest(self.study, name).hex()[:32]}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None

        def release() -> None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        return Lease(release)

    def close(self) -> None: ...


class PgLeases:
    """Leases as PostgreSQL session-level advisory locks, on one connection of their own.

    If that connection is lost (a database restart, a long network cut), every lease on it is gone: releasing
    one is then a no-op, and the next ``try_hold`` opens a new connection. A cell trained meanwhile may have been
    settled and handed on by another worker; the worker notices when it tells its trial (``Worker._end``).
    """

    KEEPALIVE = ("SET tcp_keepalives_idle = 10", "SET tcp_keepalives_interval = 5", "SET tcp_keepalives_count = 3")

    def __init__(self, url: str, study: str):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        self.study = study
        self._engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
        self._conn = None
        self._held: set[int] = set()  # advisory locks are re-entrant within a session: track our own
        self._connect()

    def _connect(self) -> None:
        from sqlalchemy import text

        if self._conn is not None:
            self._drop()
        self._conn = self._engine.connect()
        for stmt in self.KEEPALIVE:
            self._conn.execute(text(stmt))
        self._conn.commit()
        self._held.clear()  # a new session holds nothing

    def _drop(self) -> None:
        try:
            self._conn.close()
        except Exception:  # already broken
            pass
        self._conn = None

    def _key(self, name: str) -> int:
        return int.from_bytes(_digest(self.study, name)[:8], "big", signed=True)

    def _query(self, sql: str, key: int):
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._connect()
                value = self._conn.execute(text(sql), {"k": key}).scalar()
                self._conn.commit()
                return value
            except DBAPIError:
                self._drop()  # the session and its locks are gone; the second attempt opens a new one
                if attempt == 2:
                    raise

    def try_hold(self, name: str) -> Lease | None:
        key = self._key(name)
        if key in self._held:
            return None
        if not self._query("SELECT pg_try_advisory_lock(:k)", key):
            return None
        self._held.add(key)
        session = self._conn  # the session that holds the lock

        def release() -> None:
            if self._conn is not session or key not in self._held:
                return  # that session is gone, and its locks with it
            self._held.discard(key)
            try:
                self._query("SELECT pg_advisory_unlock(:k)", key)
            except Exception:
                pass  # the connection broke: the lock went with it

        return Lease(release)

    def close(self) -> None:
        if self._conn is not None:
            self._drop()


def open_leases(storage: str | None, study: str):
    if not is_rdb_url(storage):
        return FileLeases(Path(f"{journal_path(storage)}.leases"), study)
    assert storage is not None
    if storage.startswith("sqlite:///"):
        return FileLeases(Path(f"{Path(storage[len('sqlite:///'):]).resolve()}.leases"), study)
    return PgLeases(storage, study)


def hold(leases, name: str, on_wait: Callable[[], None] | None = None, poll: float = 0.2) -> Lease:
    """Wait for a lease (``on_wait`` is called once if that takes more than a second)."""
    t0, told = time.monotonic(), False
    while True:
        lease = leases.try_hold(name)
        if lease is not None:
            return lease
        if on_wait and not told and time.monotonic() - t0 > 1.0:
            on_wait()
            told = True
        time.sleep(poll)


def recover(study, storage, leases, tracking_uri: str) -> list[str]:
    """Settle every RUNNING trial whose worker is dead (its cell lease is free): adopt a FINISHED run, else
    interrupt the trial and KILL its run. Returns one line per trial settled."""
    from optuna.trial import TrialState

    done = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        key = t.user_attrs.get(S.A_GRID_KEY)
        lease = leases.try_hold(key) if key is not None else None
        if lease is None:
            continue  # alive (or not one of ours)
        try:
            if get_trial(storage, study, t.number).state == TrialState.RUNNING:
                done.append(_settle(study, storage, t.number, key, tracking_uri))
        finally:
            lease.release()
    return done


def close_interrupted(states, tracking_uri: str) -> list[str]:
    """KILL the MLflow run of every interrupted cell whose run is still RUNNING; one line per run ended.

    Its trial is settled, so its worker is done with it (``recover`` never sees it): the run is dead."""
    from nanoact import tracking

    reason = "its worker stopped before it could end this run (e.g. the store was full); the cell runs again"
    return [f"interrupted {s.cell.key}: run {s.run_id} of trial {s.trial_number} KILLED"
            for s in states if s.state == S.CellStatus.INTERRUPTED and s.run_id
            and tracking.end_run(tracking_uri, s.run_id, "KILLED", reason, only_if_running=True)]


def _settle(study, storage, number: int, key: str, tracking_uri: str) -> str:
    from optuna.trial import TrialState

    from nanoact import tracking

    run = tracking.find_trial_run(tracking_uri, study.study_name, number)
    final = tracking.final_metrics(run) if run is not None and run.info.status == "FINISHED" else None
    if final is not None and "final/val_loss" in final:
        set_trial_attrs(storage, study, number, {S.A_RUN_ID: run.info.run_id, **S.final_attrs(final),
                                                  S.A_ADOPTED: True})
        study.tell(number, _value(final["final/val_loss"]), skip_if_finished=True)
        return f"adopted {key}: trial {number}'s run {run.info.run_id} had finished before its worker died"
    reason = "its worker died while training (its lease was released); the cell runs again"
    if run is not None:
        tracking.end_run(tracking_uri, run.info.run_id, "KILLED", reason, only_if_running=True)
    set_trial_attrs(storage, study, number, {S.A_INTERRUPTED: True, S.A_ERROR: reason,
                                             **({S.A_RUN_ID: run.info.run_id} if run is not None else {})})
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    return f"interrupted {key}: trial {number}'s worker died" + (f"; run {run.info.run_id} KILLED" if run else "")


def _value(v: Any) -> float:
    import math

    v = float(v)
    return v if math.isfinite(v) else float("inf")
