"""The grid a sweep declared, and the state of each of its cells: what the report's ``cells`` guard checks against.

A report must not call a grid complete because every run it happened to find finished: a sweep stopped before one
activation's first cell leaves no trace of that activation among the runs. So the grid comes from the sweep's own
record, in this order:

1. the sweep's parent run: its tag ``nanoact.grid`` holds the axes and their values as JSON (every nanoact
   version with parent runs writes it; its length grows with the sum of the axes' lengths, not their product).
   The cells are the product of the axes, each with its grid key (``nanoact.sweep.grid_key``), exactly as the
   sweep enumerates them;
2. the Optuna study named by the parent's ``nanoact.study`` tag, user attr ``nanoact.grid``, when the parent run
   has no usable tag and the report can read the study (below).

With neither, e.g. runs of another tool or of ``nanoact train`` (no parent run), there is no declared grid: the
grid is inferred from the runs found, as before, and the ``cells`` guard says so.

The state of a cell without a FINISHED run comes from the study's trials when the study can be read: never
started (not queued), queued (WAITING), running, failed or interrupted. Otherwise it comes from the cell's MLflow
runs (running, failed, killed), and a cell with no run is "never started or queued". The study is read from the
``--storage`` given, else from the Optuna journal beside the sqlite tracking store or in ``./mlruns`` (the
sweep's default), and used only when its ``mlflow_parent_run_id`` is this parent run. Reading never creates a
file or a study.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nanoact.errors import GridVariesError, NanoactError
from nanoact.tracking import schema
from nanoact.tracking_uri import sqlite_path

GRID_TAG = schema.GRID  # parent run tag and study user attr: {axis: [values]} as JSON
STUDY_TAG = schema.STUDY
STUDY_PARENT_ATTR = "mlflow_parent_run_id"  # nanoact.sweep.coordinator.U_PARENT
DESIGN_KEYS = {"model.activation", "train.seed", "train.init_seed", "train.data_seed", "train.dropout_seed"}


@dataclass
class DeclaredCell:
    key: str  # the grid key, as the cell's runs carry it in the tag nanoact.grid_key
    values: dict[str, Any]  # the grid axes' values
    params: dict[str, str]  # the params its run logs: the parent run's base config with the cell's values
    activation: str
    seed: str  # as the report labels runs (train.seed, or i<init>-d<data> for split seeds)
    axes: tuple[tuple[str, str], ...]  # grid axes besides activation and seeds


@dataclass
class Grid:
    """Where the grid of one report comes from. ``declared`` False: inferred from the runs found."""

    declared: bool
    source: str  # in words, for the guard and the configuration section
    cells: list[DeclaredCell] = field(default_factory=list)  # the declared cells in the --where slice
    n_declared: int = 0  # every declared cell, before --where
    states: dict[str, Any] | None = None  # grid key -> nanoact.sweep.CellState, when the study was read
    states_from: str = ""  # where the missing cells' states come from, in words


def storage_candidates(tracking_uri: str | None, storage: str | None) -> list[str]:
    """The Optuna storages to look for a sweep's study in: the one given, else the journal files that exist beside
    a sqlite tracking store and in ``./mlruns`` (where ``nanoact sweep`` writes by default)."""
    if storage:
        return [storage]
    from nanoact.sweep.storage import default_storage_path

    paths = []
    db = sqlite_path(tracking_uri)
    if db is not None:
        paths.append(db.resolve().parent / "optuna-journal.log")
    paths.append(default_storage_path())
    return [str(p) for p in dict.fromkeys(paths) if p.is_file()]


def _parse_axes(text: Any) -> dict[str, list[Any]] | None:
    if isinstance(text, str):
        try:
            text = json.loads(text)
        except ValueError:
            return None
    if (isinstance(text, dict) and text and all(isinstance(k, str) for k in text)
            and all(isinstance(v, list) and v for v in text.values())):
        return text
    return None


def _find_study(parent, candidates: list[str], explicit: bool) -> tuple[Any, str]:
    """(the parent's Optuna study, or None; where it was read, or why not, in words)."""
    import optuna

    from nanoact.sweep.storage import open_storage, storage_exists
    from nanoact.tracking_uri import display_url

    name = parent.tags.get(STUDY_TAG)
    if not name:
        return None, f"parent run {parent.run_id} has no {STUDY_TAG} tag"
    if not candidates:
        return None, ("no Optuna storage was found (no optuna-journal.log beside the tracking store or in ./mlruns; "
                      "pass --storage)")
    why = []
    for storage in candidates:
        where = display_url(storage)
        if not storage_exists(storage):  # only a given one can be absent
            raise NanoactError(f"--storage: the Optuna journal {where} does not exist")
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(storage))
        except KeyError:
            if explicit:
                raise NanoactError(f"--storage {where} has no Optuna study {name!r}") from None
            why.append(f"{where} has no study {name!r}")
            continue
        except Exception as e:  # a corrupt or unreachable storage
            if explicit:
                raise NanoactError(f"cannot read Optuna study {name!r} from --storage {where}: "
                                   f"{type(e).__name__}: {e}") from None
            why.append(f"{where} could not be read ({type(e).__name__})")
            continue
        owner = study.user_attrs.get(STUDY_PARENT_ATTR)
        if owner != parent.run_id:
            msg = f"study {name!r} in {where} belongs to parent run {owner}, not {parent.run_id}"
            if explicit:
                raise NanoactError(f"--storage: {msg}")
            why.append(msg)
            continue
        return study, f"Optuna study {name!r} in {where}"
    return None, "; ".join(why)


def _cells(axes: dict[str, list[Any]], base: Mapping[str, str]) -> list[DeclaredCell]:
    """The product of the axes in the sweep's order (``SweepSpec.cells``), each labelled as its run would be."""
    from nanoact.analysis.runs import _seed_label
    from nanoact.sweep.spec import grid_key

    combos: list[dict[str, Any]] = [{}]
    for k in sorted(axes):
        combos = [{**c, k: v} for c in combos for v in axes[k]]
    out = []
    for values in combos:
        params = {**base, **{k: str(v) for k, v in values.items()}}
        params["activation"] = params.get("model.activation", params.get("activation", ""))
        params["seed"] = params.get("train.seed", params.get("seed", ""))
        seed, _, _ = _seed_label(params, {})
        others = tuple(sorted((k, str(v)) for k, v in values.items() if k not in DESIGN_KEYS))
        out.append(DeclaredCell(grid_key(values), values, params, params["activation"], seed, others))
    return out


def find_grid(parent, where: Mapping[str, str] | None, storage: str | None = None,
              tracking_uri: str | None = None) -> Grid:
    """The grid the report checks the runs against (see the module docstring). ``parent`` is the sweep's parent
    run (a ``RunRecord``) or None; ``where`` the report's ``--where`` slice."""
    if parent is None:
        return Grid(False, "no sweep parent run declares a grid (runs of another tool, or of `nanoact train`), so "
                           "the grid is inferred from the runs found and a cell no run was made for cannot be seen")
    study, study_words = _find_study(parent, storage_candidates(tracking_uri, storage), explicit=bool(storage))
    axes = _parse_axes(parent.tags.get(GRID_TAG))
    source = f"declared by parent run {parent.run_id} (tag {GRID_TAG})"
    if axes is None and study is not None:
        axes = _parse_axes(study.user_attrs.get(GRID_TAG))
        source = f"declared by {study_words} (user attr {GRID_TAG}); parent run {parent.run_id} has no usable tag"
    if axes is None:
        return Grid(False, f"parent run {parent.run_id} does not declare its grid (no usable {GRID_TAG} tag) and its "
                           f"Optuna study gives none ({study_words}), so the grid is inferred from the runs found and "
                           "a cell no run was made for cannot be seen")
    every = _cells(axes, parent.params)
    cells = [c for c in every if all(c.params.get(k, str(v)) == str(v) for k, v in (where or {}).items())]
    if not cells:
        raise NanoactError(f"--where {where}: no cell of the declared grid ({len(every)} cells, axes "
                           f"{', '.join(sorted(axes))}) matches")
    varying = sorted({k for c in cells for k, _ in c.axes if len({dict(x.axes)[k] for x in cells}) > 1})
    if varying:
        values = {k: sorted({dict(c.axes)[k] for c in cells}) for k in varying}
        hint = "; ".join(f"{k} in {values[k]}" for k in varying)
        raise GridVariesError(f"the declared grid varies {', '.join(varying)} besides activation and seed ({hint}); "
                              f"report one slice at a time, e.g. --where {varying[0]}={values[varying[0]][0]}",
                              {k: [str(v) for v in vs] for k, vs in values.items()})
    grid = Grid(True, source, cells, len(every))
    if study is not None:
        from nanoact.sweep.spec import Cell
        from nanoact.sweep.state import states_of

        trials = study.get_trials(deepcopy=False)
        grid.states = {s.cell.key: s for s in states_of([Cell(c.key, c.values) for c in cells], trials)}
        grid.states_from = f"the trials of {study_words}"
    else:
        grid.states_from = (f"the cells' MLflow runs only; the Optuna study that says whether a cell is queued was "
                            f"not read ({study_words})")
    return grid


def state_of(cell: DeclaredCell, grid: Grid, attempts: list) -> tuple[str, str]:
    """(state, words) of a declared cell that has no FINISHED run; ``attempts`` are its runs, oldest first.

    States: ``never_started``, ``queued``, ``running``, ``failed``, ``interrupted``, ``inconsistent`` (done in the
    study, yet no FINISHED run in MLflow)."""
    if grid.states is not None:
        from nanoact.sweep.state import CellStatus

        s = grid.states[cell.key]
        trial = f"trial {s.trial_number}" if s.trial_number is not None else ""
        err = f": {s.error}" if s.error else ""
        if s.state == CellStatus.MISSING:
            return "never_started", "never started, not queued (no trial in the Optuna study)"
        if s.state == CellStatus.WAITING:
            before = "never started" if not s.attempts else f"after {s.attempts} earlier attempt(s)"
            return "queued", f"queued ({trial} WAITING in the Optuna study), {before}"
        if s.state == CellStatus.RUNNING:
            run = f", run {s.run_id}" if s.run_id else ""
            return "running", (f"running ({trial} RUNNING in the Optuna study{run}; if no sweep process is alive, "
                               "the next `nanoact sweep` settles it and trains the cell again)")
        if s.state == CellStatus.FAILED:
            return "failed", f"failed ({trial}{err}); `nanoact sweep --retry-failed` runs it again"
        if s.state == CellStatus.INTERRUPTED:
            return "interrupted", f"interrupted ({trial}{err}); the next `nanoact sweep` runs it again"
        return "inconsistent", (f"done in the Optuna study ({trial}), but its MLflow run {s.run_id} is not a "
                                "FINISHED run of this experiment")
    return mlflow_state(attempts, declared=grid.declared)


def mlflow_state(attempts: list, declared: bool) -> tuple[str, str]:
    """(state, words) from a cell's MLflow runs alone (newest attempt last)."""
    if not attempts:
        if declared:
            return "never_started", ("no run: never started, or queued (the Optuna study that would tell which was "
                                     "not read)")
        return "never_started", "no run at all"
    status = attempts[-1].status
    word = {"RUNNING": "running", "FAILED": "failed", "KILLED": "interrupted"}.get(status, status.lower())
    return word, f"{word} (newest run {status})"
