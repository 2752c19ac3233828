"""Sweeps: one Optuna study per experiment, one trial per grid cell, every cell trained exactly once.

The duplicate-free pattern (FACTS §7): a coordinator enqueues each missing cell as a WAITING trial carrying its
grid key; workers pop WAITING trials (an atomic WAITING -> RUNNING transition in the storage) and train them;
when the queue is empty, ``ask()`` hands a worker a fresh trial without a grid key, and that worker stops.
Before training, a worker also checks that no other trial already holds its cell (COMPLETE, or RUNNING with a
lower trial number), so a cell enqueued twice (two coordinators at once) is still trained once.

Resume: a cell is done when a COMPLETE trial holds it. FAILED cells are retried with ``retry_failed``; cells
interrupted by Ctrl-C, and cells left RUNNING by a worker that died (its process is gone on this host, or its
heartbeat went stale on an RDB storage), are retried always. Finished runs are never touched.

Many machines (docs/DISTRIBUTED.md): every worker may run the coordinator step at once (one creates the study
and the MLflow parent run, the others wait for it). With heartbeats, live workers fail a dead worker's trial and
re-enqueue its cell exactly once, while it is still running (``_RetryStaleCell``); idle workers wait for that.

Tracking: one MLflow parent run per study, one child run per cell attempt (docs/TRACKING.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from nanoact.config import RunConfig, apply_overrides, from_dict, set_key, valid_keys
from nanoact.errors import ConfigError, NanoactError
from nanoact.tracking_uri import resolve_tracking_uri, store_dir

_logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
GRID_VALUE_TYPES = (str, int, float, bool)
SWEEP_KEYS = {"name", "description", "study", "config", "grid"}
# where and how fast a cell runs, not what it computes: may change between resumed invocations
NOT_FINGERPRINTED = {"train.threads", "train.device", "train.compile"}

# trial user attrs
A_GRID_KEY = "grid_key"
A_CELL = "cell"
A_RUN_ID = "mlflow_run_id"
A_WORKER = "nanoact.worker"
A_INTERRUPTED = "nanoact.interrupted"
A_STALE = "nanoact.stale"
A_ERROR = "nanoact.error"
A_FINAL = "nanoact.final"
A_SKIPPED = "nanoact.skipped"
A_RETRY_OF = "nanoact.retry_of"
A_HEARTBEAT = "nanoact.heartbeat_s"  # set on trials whose worker sends heartbeats


# ----------------------------------------------------------------------------------------------------------
# experiment definitions


@dataclass
class Cell:
    """One grid point: its canonical key and the config values it sets."""

    key: str
    values: dict[str, Any]


@dataclass
class SweepSpec:
    """An experiment definition: a base config plus grid axes (any config keys)."""

    name: str
    base: RunConfig
    grid: dict[str, list[Any]]
    description: str = ""
    study: str = ""
    source: str = ""

    @property
    def study_name(self) -> str:
        return self.study or self.name

    def cells(self) -> list[Cell]:
        keys = sorted(self.grid)
        out: list[Cell] = [Cell("", {})]
        for k in keys:
            out = [Cell("", {**c.values, k: v}) for c in out for v in self.grid[k]]
        for c in out:
            c.key = grid_key(c.values)
        return out

    def cell_config(self, cell: Cell) -> RunConfig:
        return apply_overrides(self.base, cell.values)

    def fingerprint(self) -> str:
        """Identifies the base config and grid: a study must not silently mix two different experiments."""
        base = {k: v for k, v in self.base.flat().items() if k not in NOT_FINGERPRINTED}
        payload = json.dumps({"base": base, "grid": self.grid}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def grid_key(values: Mapping[str, Any]) -> str:
    return "|".join(f"{k}={values[k]}" for k in sorted(values))


def sweeps_dir() -> Path:
    return Path(str(resources.files("nanoact") / "sweeps"))


def experiment_names() -> list[str]:
    return sorted(p.stem for p in sweeps_dir().glob("*.toml"))


def load_sweep(name: str | None = None, path: str | Path | None = None,
               overrides: Iterable[str] | Mapping[str, Any] = ()) -> SweepSpec:
    """Load ``sweeps/<name>.toml`` (or ``path``), validate it, and apply ``--set`` overrides to its base."""
    if (name is None) == (path is None):
        raise ConfigError("give exactly one of an experiment name or a sweep file")
    if path is None:
        p = sweeps_dir() / f"{name}.toml"
        if not p.is_file():
            raise ConfigError(f"unknown experiment {name!r}; valid experiments: {', '.join(experiment_names())}")
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"sweep file {str(p)!r} does not exist")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    spec = parse_sweep(raw, where=str(p), default_name=p.stem)
    spec.base = apply_overrides(spec.base, overrides)
    for k in spec.grid:
        _check_override_not_on_axis(k, overrides)
    return spec


def _check_override_not_on_axis(axis: str, overrides) -> None:
    keys = overrides.keys() if isinstance(overrides, Mapping) else [o.partition("=")[0].strip() for o in overrides]
    if axis in keys:
        raise ConfigError(f"--set {axis}=... would be overwritten by the grid axis {axis!r}; change the grid instead")


def parse_sweep(raw: Mapping[str, Any], where: str = "sweep", default_name: str = "") -> SweepSpec:
    """Validate a parsed sweep table; every bad key or value is an error that names it."""
    unknown = set(raw) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; valid keys: {', '.join(sorted(SWEEP_KEYS))}")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"{where}: 'name' must be a non-empty string of letters, digits, '-', '_' or '.'")
    config = raw.get("config", {})
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: [config] must be a table")
    base = from_dict(config, where=where)
    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, Mapping) or not grid_raw:
        raise ConfigError(f"{where}: [grid] must be a table with at least one axis, e.g. \"model.activation\" = [...]")
    grid: dict[str, list[Any]] = {}
    for key, values in _flatten_grid(grid_raw).items():
        if key not in valid_keys():
            raise ConfigError(f"{where}: unknown grid axis {key!r}; axes are config keys such as model.activation")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid axis {key!r} must be a non-empty list")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: grid axis {key!r} has duplicate values")
        for v in values:
            if not isinstance(v, GRID_VALUE_TYPES):
                raise ConfigError(f"{where}: grid axis {key!r}: value {v!r} must be a string, number or bool")
            probe = base.copy()
            set_key(probe, key, v)
        grid[key] = list(values)
    spec = SweepSpec(name=name, base=base, grid=grid, description=str(raw.get("description", "")),
                     study=str(raw.get("study", "")), source=where)
    for cell in spec.cells():  # every cell must be a valid config, checked before anything runs
        try:
            _validate_names(spec.cell_config(cell))
        except NanoactError as e:
            raise ConfigError(f"{where}: cell {cell.key}: {e}") from None
    return spec


def _flatten_grid(grid: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    # accepts both "model.activation" = [...] and [grid.model] activation = [...]
    out: dict[str, Any] = {}
    for k, v in grid.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_grid(v, key + "."))
        else:
            out[key] = v
    return out


def _validate_names(cfg: RunConfig) -> None:
    from nanoact.models import build_model

    build_model(cfg.model, 8)  # resolves the model and activation names; tiny vocab keeps it cheap


# ----------------------------------------------------------------------------------------------------------
# storage


def default_storage_path(cwd: str | Path | None = None) -> Path:
    return store_dir(cwd) / "optuna-journal.log"


def is_rdb_url(storage: str | None) -> bool:
    return bool(storage) and "://" in storage and not storage.startswith("journal:")


_STORAGES: dict[tuple, Any] = {}  # one RDB engine (and connection pool) per process and settings


def open_storage(storage: str | None, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 tracking_uri: str | None = None):
    """``None`` -> journal file under ``mlruns/``; a path or ``journal:PATH`` -> journal file; a database URL
    (``postgresql+psycopg2://...``, ``sqlite:///...``) -> RDB storage, with heartbeats when asked.

    With heartbeats, a trial whose worker stopped beating for ``grace_period`` seconds is failed by any live
    worker (Optuna does it before each ``ask()``; an idle worker does it while it waits), labelled stale, and its
    cell re-enqueued once per death (``_RetryStaleCell``); its MLflow run in ``tracking_uri`` becomes KILLED.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not is_rdb_url(storage):
        path = Path(storage[len("journal:"):] if storage and storage.startswith("journal:") else
                    storage or default_storage_path()).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    assert storage is not None
    if storage.startswith("postgresql://"):
        raise ConfigError("write the storage URL as postgresql+psycopg2://... (with SQLAlchemy 2.1 a bare "
                          "postgresql:// means the psycopg 3 driver, which is not installed)")
    key = (storage, heartbeat_interval, grace_period, tracking_uri)
    if key in _STORAGES:
        return _STORAGES[key]
    if not heartbeat_interval:  # reading or enqueueing: any storage of this process on the same database will do
        for (url, *_), obj in _STORAGES.items():
            if url == storage:
                return obj
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        kwargs["heartbeat_interval"] = heartbeat_interval
        kwargs["grace_period"] = grace_period or max(3 * heartbeat_interval, 180)
        kwargs["heartbeat_stale_trial_callback"] = _RetryStaleCell(tracking_uri)
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if storage.startswith("postgresql"):
        # a worker uses at most its main thread and its heartbeat thread at once: keep the pool small, because
        # every worker's pool counts against the server's max_connections (docs/DISTRIBUTED.md)
        engine.update(pool_size=2, max_overflow=3, pool_recycle=600, connect_args={"connect_timeout": 10})
    try:
        obj = _new_rdb_storage(storage, engine, kwargs)
    except Exception as e:  # driver missing, server down, wrong password, bad URL
        from nanoact.tracking_uri import display_url, redact

        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise NanoactError(redact(f"cannot open Optuna storage {display_url(storage)}: {type(e).__name__}: "
                                  f"{first}", storage)) from None
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    _STORAGES[key] = obj
    return obj


def _new_rdb_storage(url: str, engine: dict[str, Any], kwargs: dict[str, Any], attempts: int = 6):
    import random
    import time
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for i in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9; we pin optuna < 6
                warnings.simplefilter("ignore", ExperimentalWarning)
                return _rdb_storage_class()(url, engine_kwargs=engine, **kwargs)
        except (IntegrityError, ProgrammingError):
            # workers opening a fresh database at once race in Optuna's CREATE TABLE (PostgreSQL reports a
            # duplicate pg_type entry or an existing relation); the tables exist now, so try again
            if i == attempts - 1:
                raise
            time.sleep(random.uniform(0.2, 1.0))


_RDB_CLASS: list[type] = []


def _rdb_storage_class() -> type:
    """``RDBStorage`` that labels stale trials (user attrs ``nanoact.stale``/``nanoact.error``) while they are
    still RUNNING, i.e. before Optuna fails them: a finished trial's attrs can no longer be set."""
    if _RDB_CLASS:
        return _RDB_CLASS[0]
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import RDBStorage

    class NanoactRDBStorage(RDBStorage):
        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            ids = super()._get_stale_trial_ids(study_id)
            for trial_id in ids:
                try:
                    self.set_trial_user_attr(trial_id, A_STALE, True)
                    self.set_trial_user_attr(trial_id, A_ERROR, (
                        f"no heartbeat for over {self.grace_period} s (worker died or lost the database); "
                        "the cell is retried by another worker"))
                except UpdateFinishedTrialError:  # another worker failed (or the owner finished) it meanwhile
                    pass
            return ids

    _RDB_CLASS.append(NanoactRDBStorage)
    return NanoactRDBStorage


class _RetryStaleCell:
    """Heartbeat-stale callback: KILL the dead worker's MLflow run and re-enqueue its cell (once per death).

    Optuna calls it only in the process whose RUNNING -> FAIL update won (a row lock on PostgreSQL), so one
    death gives one retry. Optuna's ``RetryHeartbeatStaleTrialCallback`` would copy every user attr, the dead
    run's id and worker included; this one copies the cell only. After ``max_retries`` deaths on the same cell
    (a cell that kills its worker, e.g. out of memory) it stops; the cell stays "interrupted" and the next
    ``nanoact sweep`` enqueues it again.
    """

    def __init__(self, tracking_uri: str | None, max_retries: int = 3):
        self.tracking_uri = tracking_uri
        self.max_retries = max_retries

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        key = trial.user_attrs.get(A_GRID_KEY)
        reason = (f"worker {trial.user_attrs.get(A_WORKER, '?')} stopped sending heartbeats (it died or lost the "
                  "database); the cell is retried")
        try:
            mark_run_dead(self.tracking_uri, trial.user_attrs.get(A_RUN_ID), reason)
        except Exception as e:  # the tracking server is down: the run stays RUNNING, reports skip it anyway
            from nanoact.tracking_uri import redact

            _logger.warning(redact(f"could not mark run {trial.user_attrs.get(A_RUN_ID)} KILLED: "
                                   f"{type(e).__name__}: {e}", self.tracking_uri or ""))
        if key is None or trial.user_attrs.get(A_SKIPPED) or A_CELL not in trial.user_attrs:
            return  # an idle worker's placeholder trial, or a duplicate that was never trained
        same = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(A_GRID_KEY) == key]
        if any(t.state in (TrialState.COMPLETE, TrialState.WAITING) for t in same):
            return  # done, or already queued again (a coordinator saw it first)
        deaths = sum(bool(t.user_attrs.get(A_STALE)) for t in same)
        if deaths > self.max_retries:
            _logger.warning("cell %s killed its worker %d times; not retried again (run the sweep again to "
                            "force a retry)", key, deaths)
            return
        # a RUNNING twin (a cell enqueued twice) may still exist: _taken_by_other skips whichever comes second
        study.enqueue_trial({}, user_attrs={A_GRID_KEY: key, A_CELL: trial.user_attrs[A_CELL],
                                            A_RETRY_OF: trial.number})


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed child not yet reaped) is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


# ----------------------------------------------------------------------------------------------------------
# study state


@dataclass
class CellState:
    cell: Cell
    state: str  # done | failed | running | waiting | missing | interrupted
    trial_number: int | None = None
    run_id: str | None = None
    final_val_loss: float | None = None
    wall_s: float | None = None
    error: str | None = None
    attempts: int = 0


def _trials_by_key(study) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        k = t.user_attrs.get(A_GRID_KEY)
        if k is not None:
            out.setdefault(k, []).append(t)
    return out


def cell_states(spec: SweepSpec, study) -> list[CellState]:
    """The state of every grid cell, from the study's trials (newest attempt wins, COMPLETE beats all)."""
    from optuna.trial import TrialState

    by_key = _trials_by_key(study) if study is not None else {}
    states = []
    for cell in spec.cells():
        trials = sorted(by_key.get(cell.key, []), key=lambda t: t.number)
        trials = [t for t in trials if not t.user_attrs.get(A_SKIPPED)]
        cs = CellState(cell, "missing", attempts=sum(t.state != TrialState.WAITING for t in trials))
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        active = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        pick = complete[0] if complete else (active[-1] if active else (trials[-1] if trials else None))
        if pick is not None:
            cs.trial_number = pick.number
            cs.run_id = pick.user_attrs.get(A_RUN_ID)
            final = pick.user_attrs.get(A_FINAL) or {}
            cs.final_val_loss = final.get("final/val_loss")
            cs.wall_s = final.get("time/wall_s")
            cs.error = pick.user_attrs.get(A_ERROR)
            if pick.state == TrialState.COMPLETE:
                cs.state = "done"
            elif pick.state == TrialState.RUNNING:
                cs.state = "running"
            elif pick.state == TrialState.WAITING:
                cs.state = "waiting"
            elif pick.user_attrs.get(A_INTERRUPTED) or pick.user_attrs.get(A_STALE):
                cs.state = "interrupted"
            else:
                cs.state = "failed"
        states.append(cs)
    return states


def _fail_stale_trials(study, tracking_uri: str | None) -> list[int]:
    """RUNNING trials whose worker process is gone (same host) become FAIL(stale); their MLflow runs KILLED."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host = socket.gethostname()
    stale = []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(A_WORKER, "")
        w_host, _, w_pid = worker.rpartition(":")
        if w_host != host or not w_pid.isdigit() or _pid_alive(int(w_pid)):
            continue
        reason = f"worker {worker} died while training (process gone); the cell will be retried"
        try:
            storage.set_trial_user_attr(t._trial_id, A_STALE, True)
            storage.set_trial_user_attr(t._trial_id, A_ERROR, reason)
            if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                stale.append(t.number)
                mark_run_dead(tracking_uri, t.user_attrs.get(A_RUN_ID), reason)
        except UpdateFinishedTrialError:  # a live worker's heartbeat check failed it first (and re-enqueued it)
            continue
    return stale


def mark_run_dead(tracking_uri: str | None, run_id: str | None, reason: str) -> None:
    """A dead worker's MLflow run becomes KILLED with a tag saying why (it never counts in a report)."""
    if not run_id or not tracking_uri:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception:  # the run was never created
        return
    if run.info.status == "RUNNING":
        client.set_tag(run_id, "nanoact.error", reason)
        client.set_terminated(run_id, "KILLED")


# ----------------------------------------------------------------------------------------------------------
# the sweep


@dataclass
class SweepResult:
    study: str
    experiment_id: str | None
    parent_run_id: str | None
    states: list[CellState]
    trained: int = 0
    failed: int = 0
    planned: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(s.state == "done" for s in self.states)


@dataclass
class SweepContext:
    """Everything a worker needs, as plain data so it can cross a process boundary."""

    spec: SweepSpec
    storage: str | None
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int = 0
    device: str | None = None
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    plugins: tuple[str, ...] = ()
    worker_name: str = "w0"
    train_log: str | None = None


def _load_or_create(spec: SweepSpec, storage_obj, create: bool):
    """(study or None, created): ``created`` is True in exactly one of many coordinators starting at once (the
    storage's unique study name decides), and that one creates the MLflow parent run."""
    import optuna

    try:
        return optuna.load_study(study_name=spec.study_name, storage=storage_obj), False
    except KeyError:
        if not create:
            return None, False
    try:
        return optuna.create_study(study_name=spec.study_name, storage=storage_obj, direction="minimize"), True
    except optuna.exceptions.DuplicatedStudyError:  # another coordinator created it meanwhile
        return optuna.load_study(study_name=spec.study_name, storage=storage_obj), False


def _check_fingerprint(spec: SweepSpec, study) -> None:
    fp = study.user_attrs.get("nanoact.fingerprint")
    if fp is not None and fp != spec.fingerprint():
        raise ConfigError(
            f"study {spec.study_name!r} was created from a different config or grid; rerun with the same "
            "sweep file and --set options, or start a new study with --study NAME"
        )


def _wait_for_parent(study, timeout: float) -> str | None:
    """Another coordinator created the study and is creating the parent run: wait for its id, so that every
    worker's runs hang under one parent (None after ``timeout``: that coordinator died; create one here)."""
    import time

    t0 = time.monotonic()
    while True:
        parent = study.user_attrs.get("mlflow_parent_run_id")
        if parent is not None or time.monotonic() - t0 > timeout:
            return parent
        time.sleep(0.5)


def prepare(spec: SweepSpec, *, storage: str | None = None, tracking_uri: str | None = None,
            retry_failed: bool = False, dry_run: bool = False, heartbeat_interval: int | None = None,
            grace_period: int | None = None, parent_timeout: float = 120.0) -> tuple[SweepResult, SweepContext | None]:
    """The coordinator step: create the MLflow experiment and parent run and the study, fail stale trials,
    and enqueue every cell that still has to run. With ``dry_run`` nothing is created or changed.

    Safe to run from every worker at once: one of them creates the study and the parent run, the others wait
    for it; a cell enqueued by several is still trained once (``_taken_by_other``).
    """
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check_corpora(spec)
    uri = resolve_tracking_uri(tracking_uri)
    if not dry_run:
        from nanoact.server import check_tracking_server

        check_tracking_server(uri)
    journal_missing = not is_rdb_url(storage) and not Path(
        (storage or str(default_storage_path())).removeprefix("journal:")).exists()
    created = False
    if dry_run and journal_missing:
        study = None
    else:
        storage_obj = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                   tracking_uri=uri)
        study, created = _load_or_create(spec, storage_obj, create=not dry_run)
    if study is not None:
        _check_fingerprint(spec, study)
    if study is not None and not dry_run:
        if not created and study.user_attrs.get("mlflow_parent_run_id") is None:
            _wait_for_parent(study, parent_timeout)
            _check_fingerprint(spec, study)
        _fail_stale_trials(study, uri)
        if heartbeat_interval:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # stale cells are re-enqueued by _RetryStaleCell
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
                if t.user_attrs.get(A_STALE) and t.user_attrs.get(A_RUN_ID):  # in case the callback could not
                    mark_run_dead(uri, t.user_attrs.get(A_RUN_ID), t.user_attrs.get(A_ERROR) or "worker died")

    states = cell_states(spec, study)
    todo = [s for s in states if s.state in ("missing", "interrupted") or (retry_failed and s.state == "failed")]
    result = SweepResult(spec.study_name, None, None, states, planned=[s.cell.key for s in todo])
    if dry_run:
        return result, None

    from nanoact.tracking import ensure_experiment

    exp_id = ensure_experiment(uri, spec.name)
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent is None:
        parent = _create_parent_run(uri, exp_id, spec)
        study.set_user_attr("mlflow_parent_run_id", parent)
        study.set_user_attr("nanoact.fingerprint", spec.fingerprint())
        study.set_user_attr("nanoact.experiment", spec.name)
    else:
        from mlflow import MlflowClient

        MlflowClient(uri).update_run(parent, status="RUNNING")
    for s in todo:
        study.enqueue_trial({}, user_attrs={A_GRID_KEY: s.cell.key, A_CELL: json.dumps(s.cell.values)})
    result.experiment_id, result.parent_run_id = exp_id, parent
    ctx = SweepContext(spec, storage, uri, exp_id, parent, heartbeat_interval=heartbeat_interval,
                       grace_period=grace_period)
    return result, ctx


def _check_corpora(spec: SweepSpec) -> None:
    """A missing or corrupt corpus is a one-line error before anything is created or trained."""
    from nanoact.data import resolve_corpus

    for d in {(c.data.corpus, c.data.cache_dir) for c in map(spec.cell_config, spec.cells())}:
        resolve_corpus(d[0], d[1] or None)


def _create_parent_run(uri: str, exp_id: str, spec: SweepSpec) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Param

    import nanoact

    client = MlflowClient(uri)
    run = client.create_run(exp_id, run_name=f"sweep-{spec.study_name}", tags={
        "nanoact.role": "parent", "nanoact.study": spec.study_name, "nanoact.version": nanoact.__version__,
        "nanoact.grid": json.dumps(spec.grid), "nanoact.sweep_source": spec.source,
        "nanoact.n_cells": str(len(spec.cells())),
    })
    params = [Param(k, str(v)) for k, v in spec.base.flat().items() if k not in spec.grid]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    return run.info.run_id


def run_worker(ctx: SweepContext, progress: ProgressFn | None = None) -> tuple[int, int]:
    """Pop and train cells until the queue is empty. Returns (trained, failed)."""
    import optuna

    from nanoact.tracking import MlflowTracker
    from nanoact.trainer import train

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported by nanoact, in one line
    for mod in ctx.plugins:
        __import__(mod)
    storage_obj = open_storage(ctx.storage, heartbeat_interval=ctx.heartbeat_interval,
                               grace_period=ctx.grace_period, tracking_uri=ctx.tracking_uri)
    study = optuna.load_study(study_name=ctx.spec.study_name, storage=storage_obj)
    heartbeat = bool(ctx.heartbeat_interval) and is_rdb_url(ctx.storage)
    counts = {"trained": 0, "failed": 0}
    lost: dict[str, int | None] = {"trial": None}  # a trial of ours that another worker declared stale
    data_cache: dict[tuple, Any] = {}

    def train_cell(trial: optuna.Trial, key: str):
        values = json.loads(trial.user_attrs[A_CELL])
        for k in values:
            if k in ctx.spec.grid:  # visible as params in Optuna's own tools
                trial.suggest_categorical(k, ctx.spec.grid[k])
        cfg = ctx.spec.cell_config(Cell(key, values))
        if ctx.threads:
            cfg.train.threads = ctx.threads
        if ctx.device:
            cfg.train.device = ctx.device
        dkey = (cfg.data.corpus, cfg.data.cache_dir, cfg.data.train_fraction)
        if dkey not in data_cache:
            from nanoact.data import CharDataset

            data_cache[dkey] = CharDataset.from_config(*dkey)
        tracker = MlflowTracker(ctx.tracking_uri, ctx.experiment_id, tags={
            "mlflow.parentRunId": ctx.parent_run_id, "nanoact.role": "cell", "nanoact.grid_key": key,
            "nanoact.study": ctx.spec.study_name, "optuna.trial_number": str(trial.number),
        }, on_start=lambda run_id: trial.set_user_attr(A_RUN_ID, run_id))
        if ctx.train_log:
            with open(ctx.train_log, "a") as f:  # the trainer's own count, independent of MLflow and Optuna
                f.write(f"{key}\t{trial.number}\t{_worker_id()}\n")
        if progress:
            progress({"event": "cell_start", "key": key, "trial": trial.number, "worker": ctx.worker_name})

        def on_train(ev: dict[str, Any]) -> None:
            if progress:
                progress({**ev, "key": key, "worker": ctx.worker_name})

        return train(cfg, data=data_cache[dkey], tracker=tracker, progress=on_train,
                     run_name=f"{cfg.model.name}-{cfg.model.activation}-s{cfg.train.seed}")

    def objective(trial: optuna.Trial) -> float:
        key = trial.user_attrs.get(A_GRID_KEY)
        if key is None:  # the queue is empty: ask() created a fresh trial
            trial.set_user_attr(A_SKIPPED, "queue empty")
            if heartbeat and _wait_for_work(study, trial, ctx.heartbeat_interval or 1, lost):
                raise optuna.TrialPruned("a cell was re-enqueued")  # the loop asks again and pops it
            study.stop()
            raise optuna.TrialPruned("no waiting cell")
        if _taken_by_other(study, trial, key):
            trial.set_user_attr(A_SKIPPED, "cell already taken by another trial")
            raise optuna.TrialPruned("duplicate cell")
        trial.set_user_attr(A_WORKER, _worker_id())
        if heartbeat:
            trial.set_user_attr(A_HEARTBEAT, ctx.heartbeat_interval)
        try:
            res = train_cell(trial, key)
        except KeyboardInterrupt:
            trial.set_user_attr(A_INTERRUPTED, True)
            trial.set_user_attr(A_ERROR, "interrupted (Ctrl-C)")
            raise
        except Exception as e:
            from nanoact.tracking_uri import redact

            msg = redact(" ".join(f"{type(e).__name__}: {e}".split())[:500], ctx.storage, ctx.tracking_uri)
            if heartbeat and _declared_stale(study, trial, None):
                lost["trial"] = trial.number  # it failed, but its cell was already handed to another worker
                raise
            trial.set_user_attr(A_ERROR, msg)
            counts["failed"] += 1
            if progress:
                progress({"event": "cell_failed", "key": key, "error": msg, "worker": ctx.worker_name})
            raise
        if heartbeat and _declared_stale(study, trial, ctx.tracking_uri):
            lost["trial"] = trial.number
            raise _LostTrial(f"trial {trial.number} was declared stale while it trained; its cell was retried")
        final = {k: float(v) for k, v in res.metrics.items()}
        trial.set_user_attr(A_FINAL, final)
        counts["trained"] += 1
        if progress:
            progress({"event": "cell_done", "key": key, "metrics": final, "worker": ctx.worker_name})
        val = final["final/val_loss"]
        return val if math.isfinite(val) else float("inf")

    while True:
        try:
            study.optimize(objective, n_trials=None, catch=(Exception,), gc_after_trial=False)
            break
        except ValueError:  # Optuna cannot tell() a trial another worker already failed as stale
            if lost["trial"] is None:
                raise
            _logger.warning("trial %s was declared stale by another worker (no heartbeat for the grace period); "
                            "its cell is retried there, this worker goes on", lost["trial"])
            lost["trial"] = None
    return counts["trained"], counts["failed"]


class _LostTrial(Exception):
    """Our trial was failed as stale by another worker while we still ran it (e.g. the DB was unreachable)."""


def _declared_stale(study, trial, tracking_uri: str | None) -> bool:
    """After training: was our trial failed as stale meanwhile? Then its cell was retried elsewhere, and our
    run, FINISHED by the trainer, must not count twice: it becomes KILLED with the reason."""
    from optuna.trial import TrialState

    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state == TrialState.RUNNING:
        return False
    run_id = frozen.user_attrs.get(A_RUN_ID)
    if run_id and tracking_uri:
        from mlflow import MlflowClient

        try:
            client = MlflowClient(tracking_uri)
            client.set_tag(run_id, "nanoact.error", "finished after its trial was declared stale (no heartbeat for "
                           "the grace period); the cell was retried by another worker, whose run counts")
            client.set_terminated(run_id, "KILLED")
        except Exception as e:  # the tracking server is unreachable too: say so, go on
            from nanoact.tracking_uri import redact

            _logger.warning(redact(f"could not mark run {run_id} KILLED: {type(e).__name__}: {e}", tracking_uri))
    return True


def _wait_for_work(study, trial, interval: int, lost: dict) -> bool:
    """Heartbeat storage, empty queue: wait while other workers' cells run, failing stale ones (which re-enqueues
    them). True when a cell is waiting again; False when nothing runs any more (the grid is finished)."""
    import time
    import warnings

    import optuna
    from optuna.trial import TrialState

    while True:
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if any(t.state == TrialState.WAITING for t in trials):
            return True
        # only trials whose worker sends heartbeats can go stale; a worker started without --heartbeat that
        # dies leaves its trial RUNNING for ever, and waiting for it would never end
        if not any(t.number != trial.number and t.state == TrialState.RUNNING and t.user_attrs.get(A_HEARTBEAT)
                   and not t.user_attrs.get(A_SKIPPED) for t in trials):
            return False
        if study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
            lost["trial"] = trial.number  # our own placeholder was declared stale (we lost the database)
            raise _LostTrial("placeholder trial declared stale")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        time.sleep(min(max(interval, 1), 5))


def _taken_by_other(study, trial, key: str) -> bool:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.number == trial.number or t.user_attrs.get(A_GRID_KEY) != key or t.user_attrs.get(A_SKIPPED):
            continue
        if t.state == TrialState.COMPLETE or t.number < trial.number:
            return True
    return False


def _worker_process(ctx: SweepContext, quiet: bool) -> None:  # pragma: no cover - runs in a child process
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.default_int_handler)

    def show(ev: dict[str, Any]) -> None:
        if quiet:
            return
        e = ev["event"]
        if e == "cell_start":
            print(f"[{ctx.worker_name}] start {ev['key']} (trial {ev['trial']})", flush=True)
        elif e == "cell_done":
            m = ev["metrics"]
            print(f"[{ctx.worker_name}] done  {ev['key']}: val loss {m['final/val_loss']:.4f} "
                  f"({m['time/wall_s']:.1f} s)", flush=True)
        elif e == "cell_failed":
            print(f"[{ctx.worker_name}] FAILED {ev['key']}: {ev['error']}", flush=True)

    try:
        run_worker(ctx, show)
    except KeyboardInterrupt:
        sys.exit(130)


def run(spec: SweepSpec | str, *, overrides: Iterable[str] | Mapping[str, Any] = (), storage: str | None = None,
        tracking_uri: str | None = None, workers: int = 1, retry_failed: bool = False, dry_run: bool = False,
        devices: list[str] | None = None, heartbeat_interval: int | None = None, grace_period: int | None = None,
        plugins: Iterable[str] = (), progress: ProgressFn | None = None,
        train_log: str | None = None, init_only: bool = False) -> SweepResult:
    """Run (or resume) a sweep: the Python API behind ``nanoact sweep``.

    Args:
        spec: a ``SweepSpec`` or the name of a built-in experiment.
        overrides: ``key=value`` changes to the base config.
        storage: Optuna storage (default: a journal file under ``mlruns/``) or an RDB URL.
        tracking_uri: MLflow store (default: ``sqlite:///<cwd>/mlruns/mlflow.db``).
        workers: processes on this machine sharing the study; CPU threads are split between them.
        retry_failed: also rerun cells whose last attempt FAILED.
        dry_run: only report what would run.
        devices: one device per worker, e.g. ``["cuda:0", "cuda:1"]``.
        heartbeat_interval, grace_period: RDB heartbeats, so a dead worker's cell is retried elsewhere.
        plugins: modules to import in every worker (to register custom activations or models).
        progress: callback for progress events.
        train_log: append one line per cell a worker starts training (for audits).
        init_only: only the coordinator step (create, fail stale, enqueue); start no worker.
    """
    if isinstance(spec, str):
        spec = load_sweep(spec, overrides=overrides)
    elif overrides:
        spec.base = apply_overrides(spec.base, overrides)
    if workers < 1:
        raise ConfigError("--workers must be >= 1")
    if devices is not None:
        devices = check_devices(devices, workers)
    if heartbeat_interval and not is_rdb_url(storage):
        raise ConfigError("--heartbeat needs an RDB storage (--storage postgresql+psycopg2://...); the journal "
                          "file storage has no heartbeats")
    if grace_period and not heartbeat_interval:
        raise ConfigError("--grace-period needs --heartbeat")
    if heartbeat_interval and grace_period and grace_period <= heartbeat_interval:
        raise ConfigError(f"--grace-period ({grace_period} s) must be longer than --heartbeat "
                          f"({heartbeat_interval} s); about 3x or more")
    result, ctx = prepare(spec, storage=storage, tracking_uri=tracking_uri, retry_failed=retry_failed,
                          dry_run=dry_run, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    if dry_run or ctx is None:
        return result
    ctx.plugins = tuple(plugins)
    ctx.train_log = train_log
    if progress:
        progress({"event": "plan", "total": len(result.states),
                  "done": sum(s.state == "done" for s in result.states), "todo": len(result.planned)})
    if init_only:
        return result
    cores = os.cpu_count() or 1
    interrupted = False
    try:
        if workers == 1:
            ctx.device = devices[0] if devices else None
            trained, failed = run_worker(ctx, progress)
        else:
            trained, failed = _run_processes(ctx, workers, devices, cores, progress)
    except KeyboardInterrupt:
        interrupted = True
        trained = failed = 0
    result.trained, result.failed = trained, failed
    result = _finish(spec, ctx, result, interrupted)
    if interrupted:
        raise KeyboardInterrupt
    return result


def check_devices(devices: list[str], workers: int) -> list[str]:
    """One valid torch device string per worker (``cuda:0,cuda:1``, ``cpu``); checked without touching a GPU."""
    import torch

    devices = [d.strip() for d in devices]
    if len(devices) != workers:
        raise ConfigError(f"--devices lists {len(devices)} devices for {workers} workers; give one per worker")
    for d in devices:
        try:
            torch.device(d)
        except (RuntimeError, ValueError):
            raise ConfigError(f"--devices: {d!r} is not a device; write e.g. cuda:0,cuda:1 or cpu") from None
    return devices


def worker_contexts(ctx: SweepContext, workers: int, devices: list[str] | None, cores: int) -> list[SweepContext]:
    """What each local worker process gets: its name, its device (one per worker), its share of the cores."""
    import dataclasses

    threads = max(1, cores // workers)
    return [dataclasses.replace(ctx, worker_name=f"w{i}", threads=ctx.threads or threads,
                                device=devices[i] if devices else None) for i in range(workers)]


def _run_processes(ctx: SweepContext, workers: int, devices, cores: int, progress: ProgressFn | None):
    import multiprocessing as mp

    import optuna

    mpc = mp.get_context("spawn")
    procs = []
    for i, wctx in enumerate(worker_contexts(ctx, workers, devices, cores)):
        p = mpc.Process(target=_worker_process, args=(wctx, False), name=f"nanoact-worker-{i}")
        p.start()
        procs.append(p)
    study = optuna.load_study(study_name=ctx.spec.study_name, storage=open_storage(ctx.storage))
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=5.0 / workers)
            if progress:
                states = cell_states(ctx.spec, study)
                progress({"event": "status", "done": sum(s.state == "done" for s in states),
                          "failed": sum(s.state == "failed" for s in states), "total": len(states),
                          "running": sum(s.state == "running" for s in states)})
    except KeyboardInterrupt:
        for p in procs:
            p.join(timeout=30)
        raise
    bad = [p for p in procs if p.exitcode not in (0, None)]
    if bad:
        _logger.warning("%d worker(s) exited abnormally: %s", len(bad), [p.exitcode for p in bad])
    _fail_stale_trials(study, ctx.tracking_uri)
    states = cell_states(ctx.spec, study)
    return sum(s.state == "done" for s in states), sum(s.state == "failed" for s in states)


def _finish(spec: SweepSpec, ctx: SweepContext, result: SweepResult, interrupted: bool) -> SweepResult:
    import optuna
    from mlflow import MlflowClient

    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(ctx.storage))
    if interrupted:
        _fail_stale_trials(study, ctx.tracking_uri)
    result.states = cell_states(spec, study)
    status = "KILLED" if interrupted else ("FINISHED" if result.complete else "FAILED")
    if not any(s.state in ("running", "waiting") for s in result.states):
        MlflowClient(ctx.tracking_uri).set_terminated(ctx.parent_run_id, status)
    return result


def status(spec: SweepSpec, *, storage: str | None = None) -> list[CellState]:
    """Cell states without changing anything (no study is created)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if (not storage or "://" not in storage) and not Path(
            (storage or str(default_storage_path())).removeprefix("journal:")).exists():
        return cell_states(spec, None)
    study, _ = _load_or_create(spec, open_storage(storage), create=False)
    return cell_states(spec, study)
