"""Cell leases: how a sweep's processes exclude one another, and how a dead one is noticed.

A lease is named by the study and a name (a cell's grid key, or ``COORDINATOR``), and is released by the operating
system (or the database server) when its holder dies; ``nanoact.sweep.recovery`` says what that is used for.
``Leases`` is the protocol, with two implementations, chosen by the kind of storage (``open_leases``):

- storage in a local file (a journal file, ``sqlite:///``): ``FileLeases``, ``flock`` on
  ``<storage>.leases/<hash>.lock``; the kernel drops the lock the moment the process dies;
- PostgreSQL: ``PgLeases``, session-level advisory locks (``pg_try_advisory_lock``) on a connection held for the
  leases; the server drops them when the connection closes, i.e. when the process dies, and the connection's TCP
  keepalives (``tcp_keepalives_*``, about 25 s) also drop them when a whole machine vanishes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Callable, Protocol

from nanoact.sweep.storage import StorageKind, storage_location


def _digest(study_name: str, name: str) -> bytes:
    return hashlib.sha256(f"{study_name}\0{name}".encode()).digest()


class Lease:
    """One held lease: ``release`` gives it back (once; later calls do nothing), ``check`` says it is still held."""

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


class Leases(Protocol):
    """The leases of one study, on one storage."""

    def try_hold(self, name: str) -> Lease | None:
        """The lease ``name``, or None at once when someone (this process included) holds it."""

    def holder(self, name: str) -> str | None:
        """Who holds the lease, in words, or None when it is free; takes nothing (and creates nothing)."""

    def close(self) -> None:
        """Give back whatever these leases still hold (and their connection)."""


class FileLeases:
    """Leases as ``flock`` locks on files in one folder beside the storage.

    A lock on a file that was deleted or replaced (the folder removed by hand) excludes no one: after ``flock``
    the file's identity is compared with what the path names now (the standard lock-file check), and the folder
    is made again when it is gone."""

    def __init__(self, folder: Path, study_name: str):
        self.folder, self.study_name = folder, study_name  # the folder is made when the first lease is taken

    def _path(self, name: str) -> Path:
        return self.folder / f"{_digest(self.study_name, name).hex()[:32]}.lock"

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

    def __init__(self, url: str, study_name: str):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        self.study_name = study_name
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
        return int.from_bytes(_digest(self.study_name, name)[:8], "big", signed=True)

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


def open_leases(storage_url: str | None, study_name: str) -> Leases:
    """The leases of study ``study_name`` on the storage at ``storage_url`` (see the module docstring)."""
    where = storage_location(storage_url)
    if where.kind is StorageKind.POSTGRES:
        assert where.url is not None
        return PgLeases(where.url, study_name)
    if where.leases_folder is None:  # an unsupported URL: refused with its reason
        from nanoact.errors import ConfigError

        raise ConfigError(where.problem or f"no leases for the Optuna storage {where.display()}")
    return FileLeases(where.leases_folder, study_name)


def hold(leases: Leases, name: str, on_wait: Callable[[], None] | None = None, poll: float = 0.2,
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
