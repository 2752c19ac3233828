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
from nanoact.tracking import schema

COORDINATOR = "__coordinator__"  # the lease that serialises coordinator steps (study, parent run, enqueueing)
COORDINATOR_WAIT_S = 60.0  # the longest a process waits for the coordinator lease (it is held for storage writes
# only, never across MLflow or other network calls: a holder stopped or hung that long is not coming back soon)
MAX_DEATHS = 3  # a cell interrupted this often is left to the next `nanoact sweep` (e.g. it runs out of memory)


def _digest(study: str, name: str) -> bytes:
    return hashlib.sha256(f"{study}\0{name}".encode()).digest()


class Lease:
    def __init__(self, release: Callable[[], None], check: Callable[[], bool] | None = None):
        self._release, self._check = release, check

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None

    def check(self) -> bool:
        """Still held? A holder calls this now and then while it trains; a file lease whose lock file was deleted
        (``rm -rf`` of the lease folder) is taken again on a new file, so that no one else can take it there."""
        return self._check() if self._check is not None and self._release is not None else True


class FileLeases:
    """Leases as ``flock`` locks on files in one folder beside the storage.

    A lock on a file that was deleted or replaced (the folder removed by hand) excludes no one: after ``flock``
    the file's identity is compared with what the path names now (the standard lock-file check), and the folder
    is made again when it is gone."""

    def __init__(self, folder: Path, study: str):
        self.folder, self.study = folder, study  # the folder is made when the first lease is taken

    def _path(self, name: str) -> Path:
        return self.folder / f"{_digest(self.study, name).hex()[:32]}.lock"

    def _open(self, path: Path) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed
            self.folder.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def _lock(self, path: Path) -> int | None:
        """A descriptor of the file at ``path`` now, locked by us, or None when someone else holds that lock."""
        while True:
            fd = self._open(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            if _names(path, fd):
                try:  # who holds it, for `nanoact status` and for those who wait; a full disk does without
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, _whoami().encode(), 0)
                except OSError:
                    pass
                return fd
            os.close(fd)  # deleted or replaced between open and flock: lock the file the path names now

    def try_hold(self, name: str) -> Lease | None:
        path = self._path(name)
        fd = self._lock(path)
        if fd is None:
            return None
        held = [fd]

        def release() -> None:
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])

        def check() -> bool:
            if _names(path, held[0]):
                return True
            fd = self._lock(path)  # our file is gone: take the lease on the new one, unless someone has it
            if fd is None:
                return False
            os.close(held[0])
            held[0] = fd
            return True

        return Lease(release, check)

    def holder(self, name: str) -> str | None:
        """Who holds the lease (as its holder wrote it), or None when it is free; creates nothing."""
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def close(self) -> None: ...


def _whoami() -> str:
    import socket

    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"


def _names(path: Path, fd: int) -> bool:
    """``path`` names the open file ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


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

    def _query(self, sql: str, key: int, wait: bool = True):
        """One statement on the lease connection; a lost connection is opened again (its locks are gone), with
        backoff while the database is down (``nanoact.sweep.rdb.reconnecting``), or once with ``wait=False``."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        from nanoact.sweep.rdb import reconnecting

        def once():
            try:
                if self._conn is None:
                    self._connect()
                value = self._conn.execute(text(sql), {"k": key}).scalar()
                self._conn.commit()
                return value
            except DBAPIError:
                self._drop()  # the session and its locks are gone; a retry opens a new one
                raise

        if not wait:
            return once()
        try:
            return once()
        except DBAPIError:  # a connection dropped since the last use: the database may be back already
            return reconnecting(once, "the lease database")

    def try_hold(self, name: str) -> Lease | None:
        key = self._key(name)
        if key in self._held:
            return None
        if not self._query("SELECT pg_try_advisory_lock(:k)", key):
            return None
        self._held.add(key)
        session = [self._conn]  # the session that holds the lock

        def release() -> None:
            if self._conn is not session[0] or key not in self._held:
                return  # that session is gone, and its locks with it
            self._held.discard(key)
            try:
                self._query("SELECT pg_advisory_unlock(:k)", key, wait=False)
            except Exception:
                pass  # the connection broke: the lock went with it

        def check() -> bool:
            """After a lost connection (a database restart), take the lock again on the new session, before a
            recoverer can; never waits (the caller is training)."""
            if self._conn is session[0] and key in self._held:
                return True
            try:
                if not self._query("SELECT pg_try_advisory_lock(:k)", key, wait=False):
                    return False
            except Exception:
                return True  # the database is not back yet: no one else can take the lock either
            self._held.add(key)
            session[0] = self._conn
            return True

        return Lease(release, check)

    def holder(self, name: str) -> str | None:
        """Which database session holds the lease (from ``pg_locks``), or None when it is free."""
        key = self._key(name)
        if key in self._held:
            return f"this process (pid {os.getpid()})"
        if self._query("SELECT pg_try_advisory_lock(:k)", key):
            self._query("SELECT pg_advisory_unlock(:k)", key)
            return None
        from sqlalchemy import text

        row = self._conn.execute(text(
            "SELECT a.pid, a.client_addr, a.backend_start FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid = :hi AND l.objid = :lo"),
            {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF}).first()
        self._conn.commit()
        if row is None:
            return "another database session"
        return f"PostgreSQL backend pid {row[0]} (client {row[1] or 'local'}) since {row[2]:%Y-%m-%d %H:%M:%S %Z}"

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


def hold(leases, name: str, on_wait: Callable[[], None] | None = None, poll: float = 0.2,
         timeout: float | None = None) -> Lease | None:
    """Wait for a lease (``on_wait`` is called once if that takes more than a second); None after ``timeout``
    seconds."""
    t0, told = time.monotonic(), False
    while True:
        lease = leases.try_hold(name)
        if lease is not None:
            return lease
        waited = time.monotonic() - t0
        if timeout is not None and waited >= timeout:
            return None
        if on_wait and not told and waited > 1.0:
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
    if final is not None and schema.FINAL_VAL_LOSS in final:
        set_trial_attrs(storage, study, number, {S.A_RUN_ID: run.info.run_id, **S.final_attrs(final),
                                                  S.A_ADOPTED: True})
        study.tell(number, _value(final[schema.FINAL_VAL_LOSS]), skip_if_finished=True)
        return f"adopted {key}: trial {number}'s run {run.info.run_id} had finished before its worker died"
    reason = "its worker died while training (its lease was released); the cell runs again"
    ended = run is not None and tracking.end_run(tracking_uri, run.info.run_id, "KILLED", reason,
                                                 only_if_running=True)
    set_trial_attrs(storage, study, number, {S.A_INTERRUPTED: True, S.A_ERROR: reason,
                                             **({S.A_RUN_ID: run.info.run_id} if run is not None else {})})
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    if run is None:
        return f"interrupted {key}: trial {number}'s worker died"
    # a run its worker ended already (FAILED when the database went away) keeps that status
    return f"interrupted {key}: trial {number}'s worker died; run {run.info.run_id} " + (
        "KILLED" if ended else f"left {run.info.status}")


def _value(v: Any) -> float:
    import math

    v = float(v)
    return v if math.isfinite(v) else float("inf")
