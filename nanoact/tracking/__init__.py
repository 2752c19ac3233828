"""nanoact's side of MLflow: the only package that talks to a tracking store.

- ``tracker``: the ``Tracker`` seam the trainer logs through, and its implementations;
- ``store``: ``Store(uri)``, the one door to a store (reachability, opening, runs, the report's reader and writes);
- ``schema``: every tag, param and metric name, MLflow's limits, and the functions that build a run's tags;
- ``provenance``: where a run came from;
- ``ui``: the saved view of the runs table.

The names below are re-exported for the modules that used them from the former ``nanoact.tracking`` module.
Importing this package imports neither MLflow nor PyTorch.
"""

from nanoact.tracking.provenance import git_commit, provenance_tags
from nanoact.tracking.store import (
    Store,
    check_tracking_server,
    create_parent_run,
    delete_run,
    end_run,
    ensure_experiment,
    final_metrics,
    find_trial_run,
    open_store,
    reopen_run,
    require_store,
    runs_tagged,
)
from nanoact.tracking.tracker import (
    MemoryTracker,
    MlflowTracker,
    NullTracker,
    Tracker,
    check_system_metrics,
    predictions_npz,
)
from nanoact.tracking.ui import runs_table_path, runs_table_view, view_filter, view_key

__all__ = [
    "MemoryTracker", "MlflowTracker", "NullTracker", "Store", "Tracker", "check_system_metrics",
    "check_tracking_server", "create_parent_run", "delete_run", "end_run", "ensure_experiment", "final_metrics",
    "find_trial_run", "git_commit", "open_store", "predictions_npz", "provenance_tags", "reopen_run",
    "require_store", "runs_table_path", "runs_table_view", "runs_tagged", "view_filter", "view_key",
]
