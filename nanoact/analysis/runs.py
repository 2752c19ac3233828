"""Read the cells of an experiment from MLflow (docs/TRACKING.md schema), through
``nanoact.tracking.store.RunReader`` (``Store(uri).reader()``); their prediction artifacts are
``nanoact.analysis.predictions``'.

Works on any runs logged in that schema, not only nanoact's: a run counts as a grid cell when it has the tag
``nanoact.role = cell``, or has the params ``activation`` and ``seed`` (and is not a parent run).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nanoact.errors import GridVariesError, NanoactError
from nanoact.tracking import schema as S

if TYPE_CHECKING:
    from nanoact.analysis.grid import Grid
    from nanoact.tracking.store import RunReader

HISTORY_KEYS = (S.TRAIN_LOSS, S.VAL_LOSS)  # curves for the plots; everything else comes from final metrics
# a final metric a run lacks, from its step curve: (curve, which value)
CURVE_OF = {S.FINAL_VAL_LOSS: (S.VAL_LOSS, "last"), S.FINAL_TRAIN_LOSS: (S.TRAIN_LOSS, "last"),
            S.BEST_VAL_LOSS: (S.VAL_LOSS, "min"), S.FINAL_VAL_ACC: (S.VAL_ACC, "last"),
            S.FINAL_TRAIN_ACC: (S.TRAIN_ACC, "last"), S.BEST_VAL_ACC: (S.VAL_ACC, "max")}


@dataclass
class RunRecord:
    """One MLflow run, reduced to what the analysis reads."""

    run_id: str
    run_name: str
    experiment: str
    activation: str
    seed: str
    grid_key: str
    status: str
    start_time: int  # ms since epoch
    end_time: int | None
    parent_id: str | None
    artifact_uri: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    init_seed: str = ""  # the seed of the initial weights (train.init_seed, else the run's seed)
    data_seed: str = ""  # the seed of the batch order (train.data_seed, else the run's seed)

    @property
    def cell(self) -> tuple[str, str]:
        return self.activation, self.seed

    def label(self) -> str:
        return f"{self.activation} s{self.seed} ({self.run_id[:8]})"

    def metric(self, key: str) -> float:
        """A logged final metric, falling back to the step curves for runs that log only those."""
        if key in self.metrics:
            return float(self.metrics[key])
        curve = CURVE_OF.get(key)
        if curve and self.history.get(curve[0]):
            vals = [v for _, v in sorted(self.history[curve[0]])]
            return float({"last": vals[-1], "min": min(vals), "max": max(vals)}[curve[1]])
        return math.nan


@dataclass
class MissingCell:
    activation: str
    seed: str
    attempts: list[RunRecord]  # every non-FINISHED attempt seen for the cell (possibly none)
    state: str = ""  # never_started, queued, running, failed, interrupted, inconsistent (nanoact.analysis.grid)
    state_text: str = ""  # the state in words, with where it comes from
    axes: tuple[tuple[str, str], ...] = ()  # grid axes besides activation and seed (a --where slice)
    grid_key: str = ""  # of a declared cell

    def describe(self) -> str:
        head = f"{self.activation} s{self.seed}" + "".join(f" {k}={v}" for k, v in self.axes)
        runs = [f"{r.run_id} {r.status}" + (f" ({r.tags[S.ERROR]})" if r.tags.get(S.ERROR) else "")
                for r in self.attempts]
        state = self.state_text or ("" if runs else "no run at all")
        return f"{head}: " + "; ".join(([state] if state else []) + (["runs " + ", ".join(runs)] if state and runs
                                                                      else runs))


@dataclass
class ExperimentRuns:
    """The cells of one experiment after choosing one FINISHED attempt per grid cell."""

    name: str
    experiment_id: str
    runs: list[RunRecord]  # selected, sorted by (activation, seed)
    activations: list[str]  # the complete grid, from every child run of any status
    seeds: list[str]
    missing: list[MissingCell]
    duplicates: list[tuple[RunRecord, RunRecord]]  # same activation+seed, different grid keys (both FINISHED)
    superseded: list[RunRecord]  # older FINISHED attempts of a selected grid key
    not_finished: list[RunRecord]  # FAILED / KILLED / RUNNING children
    parents: list[RunRecord]
    grid: Grid | None = None  # where the grid comes from (declared by the sweep, or inferred from the runs)
    outside_grid: list[RunRecord] = field(default_factory=list)  # selected runs that are no cell of the declared grid

    def parent_run_id(self) -> str | None:
        """Newest parent named by the selected cells' ``mlflow.parentRunId`` tags."""
        known = _parent_of(self.runs, self.parents)
        if known is not None:
            return known.run_id
        ids = {r.parent_id for r in self.runs if r.parent_id}
        return sorted(ids)[0] if len(ids) == 1 else None


def _parent_of(runs: list[RunRecord], parents: list[RunRecord]) -> RunRecord | None:
    ids = {r.parent_id for r in runs if r.parent_id}
    known = [p for p in parents if p.run_id in ids]
    return max(known, key=lambda p: p.start_time) if known else None


def _seed_key(s: str) -> tuple[int, float | str]:
    try:
        return 0, float(s)
    except ValueError:
        return 1, s


def sort_seeds(seeds: set[str] | list[str]) -> list[str]:
    return sorted(set(seeds), key=_seed_key)


SOURCE_SEEDS = ("train.init_seed", "train.data_seed", "train.dropout_seed")  # -1 (or absent): train.seed


def _seed_label(params: Mapping[str, str], tags: Mapping[str, str]) -> tuple[str, str, str]:
    """(block label, init seed, data seed). The block is the run's seed, or every explicit source seed."""
    seed = params.get(S.P_SEED) or tags.get(S.SEED) or params.get(S.P_TRAIN_SEED, "")
    explicit = {k: params[k] for k in SOURCE_SEEDS if params.get(k, "-1") != "-1"}
    init = explicit.get("train.init_seed", seed)
    data = explicit.get("train.data_seed", seed)
    if not explicit:
        return str(seed), str(init), str(data)
    label = f"i{init}-d{data}" + (f"-o{explicit['train.dropout_seed']}" if "train.dropout_seed" in explicit else "")
    return label, str(init), str(data)


def _record(run, experiment: str) -> RunRecord:
    params, tags = dict(run.data.params), dict(run.data.tags)
    activation = params.get(S.P_ACTIVATION) or tags.get(S.ACTIVATION) or params.get(S.P_MODEL_ACTIVATION, "")
    seed, init, data = _seed_label(params, tags)
    grid_key = tags.get(S.GRID_KEY) or f"activation={activation}|seed={seed}"
    return RunRecord(
        run_id=run.info.run_id, run_name=run.info.run_name or "", experiment=experiment,
        activation=str(activation), seed=str(seed), grid_key=grid_key, status=run.info.status,
        start_time=int(run.info.start_time or 0), end_time=run.info.end_time, parent_id=tags.get(S.PARENT_RUN_ID),
        artifact_uri=run.info.artifact_uri, params=params, tags=tags, metrics=dict(run.data.metrics),
        init_seed=init, data_seed=data,
    )


def _is_cell(rec: RunRecord) -> bool:
    role = rec.tags.get(S.ROLE)
    if role == S.ROLE_PARENT:
        return False
    return role == S.ROLE_CELL or (S.P_ACTIVATION in rec.params and S.P_SEED in rec.params)


DESIGN_AXES = {S.P_MODEL_ACTIVATION, S.P_TRAIN_SEED, S.P_ACTIVATION, S.P_SEED, *SOURCE_SEEDS}


def _other_axes(rec: RunRecord) -> tuple[tuple[str, str], ...]:
    """Grid axes besides activation and seed (e.g. model.name in the zoo), from the grid key."""
    out = []
    for part in rec.grid_key.split("|"):
        k, eq, v = part.partition("=")
        if eq and k not in DESIGN_AXES:  # keys of other tools without key=value parts carry no axes
            out.append((k, v))
    return tuple(sorted(out))


def _slice(name: str, children: list[RunRecord], study: str | None,
           where: Mapping[str, str] | None) -> list[RunRecord]:
    """Keep one study and one slice of any extra grid axes: the design analysed is activation x seed."""
    for key, value in (where or {}).items():
        if not any(key in r.params for r in children):
            raise NanoactError(f"--where {key}=...: no run of experiment {name!r} has a param {key!r}")
        children = [r for r in children if r.params.get(key) == str(value)]
        if not children:
            raise NanoactError(f"--where {key}={value}: no run of experiment {name!r} matches")
    studies = sorted({r.tags[S.STUDY] for r in children if r.tags.get(S.STUDY)})
    if study is not None:
        children = [r for r in children if r.tags.get(S.STUDY) == study]
        if not children:
            raise NanoactError(f"experiment {name!r} has no runs of study {study!r}; studies: {', '.join(studies)}")
    elif len(studies) > 1:
        raise NanoactError(f"experiment {name!r} holds runs of several studies ({', '.join(studies)}); "
                           "choose one with --study NAME")
    others = sorted({_other_axes(r) for r in children})
    if len(others) > 1:
        axes = sorted({k for o in others for k, _ in o})
        values = {k: sorted({v for o in others for kk, v in o if kk == k}) for k in axes}
        hint = "; ".join(f"{k} in {values[k]}" for k in axes)
        raise GridVariesError(f"experiment {name!r} varies {', '.join(axes)} besides activation and seed ({hint}); "
                              f"report one slice at a time, e.g. --where {axes[0]}={values[axes[0]][0]}", values)
    return children


def _newest_per(runs: list[RunRecord], key) -> tuple[list[RunRecord], list[tuple[RunRecord, RunRecord]]]:
    """The newest run (by start time) of each group, and (older, newest) for every other run of a group."""
    groups: dict[Any, list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[key(r)].append(r)
    newest, older = [], []
    for g in groups.values():
        g.sort(key=lambda r: (r.start_time, r.run_id))
        newest.append(g[-1])
        older.extend((old, g[-1]) for old in g[:-1])
    return newest, older


def load_experiment(
    reader: RunReader, name: str, progress: Callable[[str], None] | None = None,
    study: str | None = None, where: Mapping[str, str] | None = None, *,
    storage: str | None = None, tracking_uri: str | None = None,
) -> ExperimentRuns:
    """All runs of experiment ``name``; one FINISHED run per grid cell (newest attempt by start time).

    ``study`` and ``where`` (param filters) select one study and one slice of any grid axes besides
    activation and seed; without them, an experiment holding several is an error that says how to choose.
    The grid is the one the sweep declared (``nanoact.analysis.grid``; ``storage`` and ``tracking_uri`` say where
    to look for its Optuna study), else the one the runs found span.
    """
    from nanoact.analysis.grid import find_grid

    exp = reader.experiment(name)
    if exp is None:
        names = reader.experiment_names()
        raise NanoactError(f"no experiment named {name!r} in the tracking store; it has: {', '.join(names) or 'none'}")
    records = [_record(r, name) for r in reader.all_runs(exp.experiment_id)]
    parents = [r for r in records if r.tags.get(S.ROLE) == S.ROLE_PARENT]
    children = _slice(name, [r for r in records if _is_cell(r)], study, where)
    if progress:
        progress(f"{name}: {len(children)} cell runs, {len(parents)} parent runs")

    finished = [r for r in children if r.status == "FINISHED"]
    if not finished:
        raise NanoactError(
            f"experiment {name!r} has no FINISHED cell runs ({len(children)} cell runs in other states); "
            "run or resume the sweep first"
        )
    selected, retried = _newest_per(finished, lambda r: r.grid_key)  # a cell's earlier attempts are superseded
    kept, duplicates = _newest_per(selected, lambda r: r.cell)  # one cell under two grid keys: a guard failure
    not_finished = [r for r in children if r.status != "FINISHED"]
    grid = find_grid(_parent_of(kept, parents), where, storage, tracking_uri)
    if grid.declared:
        activations, seeds, missing, outside = _against_declared(grid, kept, not_finished)
    else:
        activations, seeds, missing, outside = _inferred(grid, children, kept, not_finished)
    kept.sort(key=lambda r: (r.activation, _seed_key(r.seed)))
    return ExperimentRuns(name=name, experiment_id=exp.experiment_id, runs=kept, activations=activations,
                          seeds=seeds, missing=missing, duplicates=duplicates,
                          superseded=[old for old, _ in retried],
                          not_finished=not_finished, parents=parents, grid=grid, outside_grid=outside)


def _inferred(grid, children, kept, not_finished):
    """Today's rule for runs without a declared grid: every activation x seed seen in any cell run."""
    from nanoact.analysis.grid import mlflow_state

    activations = sorted({r.activation for r in children})
    seeds = sort_seeds({r.seed for r in children})
    have = {r.cell for r in kept}
    missing = []
    for a in activations:
        for s in seeds:
            if (a, s) not in have:
                tries = sorted((r for r in not_finished if r.cell == (a, s)), key=lambda r: r.start_time)
                state, words = mlflow_state(tries, declared=False)
                missing.append(MissingCell(a, s, tries, state, words if tries else ""))
    return activations, seeds, missing, []


def _against_declared(grid, kept, not_finished):
    """The declared cells (in the --where slice): which have no FINISHED run, and in which state; and the
    analysed runs that are no declared cell."""
    from nanoact.analysis.grid import state_of

    def matches(r: RunRecord, c) -> bool:  # runs without nanoact's grid key tag match by their cell
        return r.grid_key == c.key if S.GRID_KEY in r.tags else r.cell == (c.activation, c.seed)

    missing, matched = [], set()
    for c in grid.cells:
        done = [r for r in kept if matches(r, c)]
        matched.update(r.run_id for r in done)
        if done:
            continue
        tries = sorted((r for r in not_finished if matches(r, c)), key=lambda r: r.start_time)
        state, words = state_of(c, grid, tries)
        missing.append(MissingCell(c.activation, c.seed, tries, state, words, c.axes, c.key))
    activations = sorted({c.activation for c in grid.cells})
    seeds = sort_seeds({c.seed for c in grid.cells})
    return activations, seeds, missing, [r for r in kept if r.run_id not in matched]


def load_histories(reader: RunReader, runs: list[RunRecord], keys: tuple[str, ...] = HISTORY_KEYS) -> None:
    """Fill ``run.history`` with (step, value) curves; ``val/acc`` too when a run lacks final metrics."""
    for r in runs:
        wanted = list(keys)
        if S.FINAL_VAL_ACC not in r.metrics:
            wanted.append(S.VAL_ACC)
        if S.FINAL_TRAIN_ACC not in r.metrics:
            wanted.append(S.TRAIN_ACC)
        for key in wanted:
            hist = reader.metric_history(r.run_id, key)
            if hist:
                by_step = {}
                for m in sorted(hist, key=lambda m: (m.step, m.timestamp)):
                    by_step[int(m.step)] = float(m.value)  # a re-logged step keeps its latest value
                r.history[key] = sorted(by_step.items())
