"""Sweeps: one Optuna study per experiment, one trial per grid cell, every cell trained exactly once.

The modules, one job each:

- ``spec``: experiment definitions (base config + grid), validated; no Optuna.
- ``state``: cell states and the result of a call.
- ``storage``: what kind of Optuna storage a ``--storage`` string names, and opening it; ``journal``: the journal
  file, repaired; ``rdb``: a database storage that survives a restart.
- ``leases``: the ``Leases`` protocol (a lease per cell, released when its holder dies) and its two
  implementations, ``flock`` files and PostgreSQL advisory locks.
- ``handle``: ``StudyHandle``, the study with its storage, leases and tracking store; taking a trial off the queue.
- ``recovery``: how a dead worker is noticed (its cell's lease is free) and what happens to its cell.
- ``coordinator``: creating the study and parent run, enqueueing cells, ending the parent run.
- ``worker``: the loop that pops and trains cells; ``pool``: several workers on this machine.
- ``api``: ``run`` and ``status``.

Tracking: one MLflow parent run per study, one child run per cell attempt (docs/TRACKING.md).
"""

from nanoact.sweep.api import coordinator_holder, rounds_recorded, run, status
from nanoact.sweep.options import SweepOptions, WorkerContext, check_devices, worker_contexts
from nanoact.sweep.spec import (
                                Cell,
                                SweepSpec,
                                builtin_sweeps_dir,
                                experiment_names,
                                experiments,
                                grid_key,
                                is_builtin,
                                load_sweep,
                                parse_sweep,
)
from nanoact.sweep.state import CellState, CellStatus, SweepResult, cell_states
from nanoact.sweep.storage import default_storage_path, open_storage

__all__ = [
    "Cell", "CellState", "CellStatus", "SweepOptions", "SweepResult", "SweepSpec", "WorkerContext",
    "coordinator_holder", "rounds_recorded",
    "cell_states", "check_devices", "default_storage_path", "experiment_names", "grid_key", "load_sweep",
    "open_storage", "parse_sweep", "run", "status", "builtin_sweeps_dir", "experiments", "is_builtin",
    "worker_contexts",
]
