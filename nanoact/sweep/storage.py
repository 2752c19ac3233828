"""Where a sweep's Optuna storage is, and opening it.

``storage_location`` is the one place that reads a ``--storage`` string (``storage_url`` below, a string; an Optuna
storage object is ``storage``):

- no storage given: a journal file, ``mlruns/optuna-journal.log`` under the working directory;
- a path or ``journal:PATH``: a journal file there (several processes on one machine);
- a database URL: ``postgresql+psycopg2://...`` for many machines, or ``sqlite:///...``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanoact.errors import ConfigError, NanoactError
from nanoact.tracking_uri import store_dir

_ENGINES: dict[str, Any] = {}  # one RDB storage (engine and connection pool) per process and URL


class StorageKind(str, enum.Enum):
    JOURNAL = "journal"  # a journal file; cell leases are flock locks beside it
    SQLITE = "sqlite"  # sqlite:///PATH; flock locks beside the database file
    POSTGRES = "postgresql"  # postgresql+psycopg2://...; PostgreSQL advisory locks
    UNSUPPORTED = "unsupported"  # any other URL: refused when opened, with ``StorageLocation.problem``


@dataclass(frozen=True)
class StorageLocation:
    """A ``--storage`` setting as ``storage_location`` read it."""

    url: str | None  # as given; None: the default journal file
    kind: StorageKind
    path: Path | None = None  # the journal file or the SQLite database, absolute; None for a database server
    problem: str | None = None  # why an UNSUPPORTED URL is refused

    @property
    def is_rdb(self) -> bool:
        """An Optuna RDB storage (a database URL), not a journal file."""
        return self.kind is not StorageKind.JOURNAL

    @property
    def leases_folder(self) -> Path | None:
        """Where the flock leases of a file storage are (``nanoact.sweep.leases``); None for a database server."""
        return Path(f"{self.path}.leases") if self.path is not None else None

    def exists(self) -> bool:
        """False only for a journal file that is not there yet (reading it would create it)."""
        return self.is_rdb or (self.path is not None and self.path.exists())

    def display(self) -> str:
        """The journal file, or the URL with its password masked."""
        from nanoact.tracking_uri import display_url

        return display_url(self.url) if self.is_rdb else str(self.path)


def storage_location(storage_url: str | None) -> StorageLocation:
    """The kind of storage ``storage_url`` names, and its file (see the module docstring)."""
    if not storage_url or "://" not in storage_url or storage_url.startswith("journal:"):
        text = storage_url[len("journal:"):] if storage_url and storage_url.startswith("journal:") else storage_url
        return StorageLocation(storage_url, StorageKind.JOURNAL, Path(text or default_storage_path()).resolve())
    if storage_url.startswith("sqlite:///"):
        return StorageLocation(storage_url, StorageKind.SQLITE, Path(storage_url[len("sqlite:///"):]).resolve())
    if storage_url.startswith("postgresql+psycopg2://"):
        return StorageLocation(storage_url, StorageKind.POSTGRES)
    if storage_url.startswith("postgresql://"):
        problem = ("write the storage URL as postgresql+psycopg2://... (with SQLAlchemy 2.1 a bare postgresql:// "
                   "means the psycopg 3 driver, which is not installed)")
    else:
        problem = ("an RDB storage must be postgresql+psycopg2://... or sqlite:///... (the two whose worker leases "
                   "nanoact supports)")
    return StorageLocation(storage_url, StorageKind.UNSUPPORTED, problem=problem)


def default_storage_path(cwd: str | Path | None = None) -> Path:
    return store_dir(cwd) / "optuna-journal.log"


def storage_exists(storage_url: str | None) -> bool:
    """False only for a journal file that is not there yet (reading it would create it)."""
    return storage_location(storage_url).exists()


def open_storage(storage_url: str | None):
    """The Optuna storage object for ``storage_url`` (see the module docstring); one per process and URL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    where = storage_location(storage_url)
    if where.kind is StorageKind.JOURNAL:
        assert where.path is not None
        return _open_journal(where.path)
    if where.problem is not None:
        raise ConfigError(where.problem)
    url = where.url
    assert url is not None
    if url not in _ENGINES:
        # wrapped as optuna.load_study would wrap it (a trial cache): the study and nanoact's own calls (popping
        # a trial, labelling a dead one) must share that cache, or a trial popped here is unknown to the study
        _ENGINES[url] = optuna.storages.get_storage(_new_rdb_storage(url))
    return _ENGINES[url]


def _open_journal(path: Path):
    from optuna.storages import JournalStorage

    from nanoact.sweep.journal import Journal, JournalCorrupt, repair_journal

    try:  # Optuna's own failure on a read-only or full disk is "AssertionError: Should not reach."
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as e:
        from nanoact.errors import storage_error

        raise (storage_error(e, str(path)) or NanoactError(f"cannot open the Optuna journal {path}: {e}")) from None
    repair_journal(path)  # a torn last line: the next append would be glued onto it
    try:
        return JournalStorage(Journal(path))
    except JournalCorrupt:  # a torn line that an append was glued onto already
        repair_journal(path, force=True)
        return JournalStorage(Journal(path))


def _new_rdb_storage(url: str, attempts: int = 6):
    import random
    import time

    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    from nanoact.sweep.rdb import ReconnectingRDBStorage
    from nanoact.tracking_uri import display_url

    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        # every worker's pool counts against the server's max_connections (docs/DISTRIBUTED.md)
        engine.update(pool_size=2, max_overflow=3, pool_recycle=600, connect_args={"connect_timeout": 10})
    for i in range(attempts):
        try:
            return ReconnectingRDBStorage(url, f"the Optuna storage {display_url(url)}", engine_kwargs=engine)
        except (IntegrityError, ProgrammingError, OperationalError) as e:
            # processes opening a fresh database at once race in Optuna's CREATE TABLE (a duplicate pg_type entry,
            # an existing relation, a locked sqlite file); the tables exist now, so try again
            if i == attempts - 1 or _unreachable(e):
                raise _cannot_open(url, e) from None
            time.sleep(random.uniform(0.2, 1.0))
        except Exception as e:  # driver missing, bad URL
            raise _cannot_open(url, e) from None


def _unreachable(e: Exception) -> bool:
    text = str(e).lower()
    return any(s in text for s in ("could not connect", "connection refused", "authentication failed",
                                   "could not translate", "timeout expired", "invalid port", "does not exist"))


def _cannot_open(url: str, e: Exception) -> NanoactError:
    from nanoact.tracking_uri import display_url, redact

    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return NanoactError(redact(f"cannot open Optuna storage {display_url(url)}: {type(e).__name__}: {first}", url))
