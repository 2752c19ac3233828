"""Opening the Optuna storage of a sweep, and taking trials off its queue.

- no storage given: a journal file, ``mlruns/optuna-journal.log`` under the working directory;
- a path or ``journal:PATH``: a journal file there (several processes on one machine);
- a database URL: ``postgresql+psycopg2://...`` for many machines, or ``sqlite:///...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nanoact.errors import ConfigError, NanoactError
from nanoact.tracking_uri import store_dir

_ENGINES: dict[str, Any] = {}  # one RDB storage (engine and connection pool) per process and URL


def default_storage_path(cwd: str | Path | None = None) -> Path:
    return store_dir(cwd) / "optuna-journal.log"


def is_rdb_url(storage: str | None) -> bool:
    return bool(storage) and "://" in storage and not storage.startswith("journal:")


def journal_path(storage: str | None) -> Path:
    """The journal file of a non-RDB storage setting (absolute)."""
    text = storage[len("journal:"):] if storage and storage.startswith("journal:") else storage
    return Path(text or default_storage_path()).resolve()


def storage_exists(storage: str | None) -> bool:
    """False only for a journal file that is not there yet (reading it would create it)."""
    return is_rdb_url(storage) or journal_path(storage).exists()


def open_storage(storage: str | None):
    """The Optuna storage object for ``storage`` (see the module docstring); one per process and URL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not is_rdb_url(storage):
        from optuna.storages import JournalStorage

        from nanoact.sweep.journal import Journal, JournalCorrupt, repair_journal

        path = journal_path(storage)
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
    assert storage is not None
    if storage.startswith("postgresql://"):
        raise ConfigError("write the storage URL as postgresql+psycopg2://... (with SQLAlchemy 2.1 a bare "
                          "postgresql:// means the psycopg 3 driver, which is not installed)")
    if not storage.startswith(("postgresql+psycopg2://", "sqlite:///")):
        raise ConfigError("an RDB storage must be postgresql+psycopg2://... or sqlite:///... (the two whose "
                          "worker leases nanoact supports)")
    if storage not in _ENGINES:
        # wrapped as optuna.load_study would wrap it (a trial cache): the study and nanoact's own calls (popping
        # a trial, labelling a dead one) must share that cache, or a trial popped here is unknown to the study
        _ENGINES[storage] = optuna.storages.get_storage(_new_rdb_storage(storage))
    return _ENGINES[storage]


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


def pop_trial(study, storage, axes: dict[str, list[Any]], leases):
    """Take one WAITING trial off the study's queue, with its cell's lease: ``(trial, lease)``, or None when no
    waiting trial's cell is free. The lease is taken *before* the trial turns RUNNING, so a RUNNING trial whose
    lease is free is always a dead one (``nanoact.sweep.recovery``). The trial comes as a ``Trial`` of ours with
    its enqueued params set (``axes``: the grid, for Optuna's categorical distributions).

    The only place nanoact reaches below Optuna's public API (``optuna.Trial`` built from a trial id):
    ``study.ask()`` would create a trial without params whenever the queue is empty, and such pseudo-trials would
    sit in the record. The WAITING -> RUNNING update is atomic in every storage: no two workers pop one trial.
    """
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from nanoact.sweep.state import A_GRID_KEY

    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        lease = leases.try_hold(frozen.user_attrs.get(A_GRID_KEY))
        if lease is None:
            continue  # its cell is being trained or checked right now
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            popped = storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        except UpdateFinishedTrialError:
            popped = False
        if not popped:
            lease.release()
            continue
        trial = optuna.Trial(study, trial_id)
        for name, choices in axes.items():  # Optuna returns the enqueued value, never a pick of its own
            trial.suggest_categorical(name, choices)
        return trial, lease
    return None


def _trial_id(storage, study, number: int) -> int:
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def set_trial_attrs(storage, study, number: int, attrs: dict[str, Any]) -> None:
    """User attrs on any trial of the study (by number), e.g. one a dead worker left RUNNING."""
    trial_id = _trial_id(storage, study, number)
    for k, v in attrs.items():
        storage.set_trial_user_attr(trial_id, k, v)


def get_trial(storage, study, number: int):
    return storage.get_trial(_trial_id(storage, study, number))
