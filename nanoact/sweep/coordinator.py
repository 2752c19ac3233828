"""The coordinator step of a sweep, and its end.

``prepare`` creates (or resumes) the study and the MLflow parent run, settles trials whose workers died, and
enqueues every cell that has to run, each as a WAITING trial whose params are the cell's values. Any number of
processes may run it at once, on one machine or many: they take the study's coordinator lease in turn, so the
study and the parent run are created once and no cell is enqueued twice. ``finish`` ends the parent run once
no cell is running or queued any more.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from nanoact.sweep import state as S
from nanoact.sweep.options import EventFn, SweepOptions, WorkerContext
from nanoact.sweep.recovery import COORDINATOR, MAX_DEATHS, close_interrupted, hold, open_leases, recover
from nanoact.sweep.spec import SweepSpec
from nanoact.sweep.storage import open_storage, storage_exists

U_PARENT = "mlflow_parent_run_id"
U_FINGERPRINT = "nanoact.fingerprint"


def prepare(spec: SweepSpec, opts: SweepOptions, events: EventFn) -> tuple[S.SweepResult, WorkerContext | None]:
    """The coordinator step (see the module docstring). With ``opts.dry_run`` nothing is created or changed."""
    from nanoact import tracking
    from nanoact.server import check_tracking_server
    from nanoact.tracking_uri import resolve_tracking_uri

    _check_corpora(spec)
    uri = resolve_tracking_uri(opts.tracking_uri)
    if opts.dry_run:
        return _plan_only(spec, opts), None
    check_tracking_server(uri)
    tracking.open_store(uri)
    storage = open_storage(opts.storage)
    leases = open_leases(opts.storage, spec.study_name)
    lease = hold(leases, COORDINATOR, on_wait=lambda: events(
        {"event": "waiting", "detail": f"another nanoact process is setting up study {spec.study_name}; waiting"}))
    try:
        study = _load_or_create(spec, storage)
        exp_id = tracking.ensure_experiment(uri, spec.name, experiment_tags(spec))
        parent = _parent_run(spec, study, uri, exp_id)
        recovered = recover(study, storage, leases, uri)
        recovered += close_interrupted(S.cell_states(spec, study.get_trials(deepcopy=False)), uri)
        for line in recovered:
            events({"event": "recovered", "detail": line})
        planned = enqueue(spec, study, retry_failed=opts.retry_failed)
        states = S.cell_states(spec, study.get_trials(deepcopy=False))
    finally:
        lease.release()
        leases.close()
    result = S.SweepResult(spec.study_name, exp_id, parent, states, planned=planned, recovered=recovered)
    return result, WorkerContext(spec, opts.storage, uri, exp_id, parent, plugins=opts.plugins,
                                 train_log=opts.train_log, system_metrics=opts.system_metrics)


def _plan_only(spec: SweepSpec, opts: SweepOptions) -> S.SweepResult:
    study = load_study(spec, opts.storage)
    if study is not None:
        check_fingerprint(spec, study)
    states = S.cell_states(spec, study.get_trials(deepcopy=False) if study is not None else None)
    # WAITING: queued by an earlier call and not yet taken, so it runs too
    todo = [s.cell.key for s in states if s.state == S.CellStatus.WAITING or _to_enqueue(s.state, opts.retry_failed)]
    return S.SweepResult(spec.study_name, None, None, states, planned=todo)


def load_study(spec: SweepSpec, storage: str | None):
    """The study, or None when it does not exist (nothing is created)."""
    import optuna

    if not storage_exists(storage):
        return None
    try:
        return optuna.load_study(study_name=spec.study_name, storage=open_storage(storage))
    except KeyError:
        return None


def _load_or_create(spec: SweepSpec, storage):
    import optuna

    try:
        study = optuna.load_study(study_name=spec.study_name, storage=storage)
    except KeyError:
        study = optuna.create_study(study_name=spec.study_name, storage=storage, direction="minimize")
        with warnings.catch_warnings():  # experimental since Optuna 3.2; shown by optuna-dashboard
            warnings.simplefilter("ignore")
            study.set_metric_names(["final val loss"])
        for k, v in {"nanoact.experiment": spec.name, "nanoact.description": spec.description,
                     "nanoact.grid": spec.grid, "nanoact.source": spec.source,
                     U_FINGERPRINT: spec.fingerprint()}.items():
            study.set_user_attr(k, v)
        save_dashboard_note(storage, spec)
    check_fingerprint(spec, study)
    return study


def save_dashboard_note(storage, spec: SweepSpec) -> None:
    """The study's note in optuna-dashboard (its format: study system attrs ``dashboard:note_ver`` and
    ``dashboard:note_str:0``, as ``optuna_dashboard.save_note`` writes them), saying what the trials are."""
    axes = ", ".join(f"`{k}`" for k in spec.grid)
    reps = [k for k in spec.grid if k.endswith("seed")]
    seeds = ""
    if reps:
        seeds = (f"{', '.join(f'`{k}`' for k in reps)} {'is a replicate' if len(reps) == 1 else 'are replicates'} "
                 "(a block of the design), not a hyperparameter: hyperparameter importance that ranks it, or contour "
                 "plots that interpolate between seeds, say nothing about activations. ")
    body = (f"## {spec.study_name}\n\nnanoact sweep of experiment `{spec.name}`: each trial is one cell of the grid "
            f"({axes}), trained once; its value is the final val loss, its intermediate values the val loss at "
            f"each eval step. {seeds}The analysis is `nanoact report`; every metric of a cell is in MLflow (the "
            "trial's `mlflow_run_id`).")
    study_id = storage.get_study_id_from_name(spec.study_name)
    storage.set_study_system_attr(study_id, "dashboard:note_ver", 1)
    storage.set_study_system_attr(study_id, "dashboard:note_str:0", body[:2045])


def check_fingerprint(spec: SweepSpec, study) -> None:
    from nanoact.errors import ConfigError

    fp = study.user_attrs.get(U_FINGERPRINT)
    if fp is not None and fp != spec.fingerprint():
        raise ConfigError(
            f"study {spec.study_name!r} was created from a different config or grid; rerun with the same "
            "sweep file and --set options, or start a new study with --study NAME"
        )


def _parent_run(spec: SweepSpec, study, uri: str, exp_id: str) -> str:
    from nanoact import tracking

    import nanoact

    parent = study.user_attrs.get(U_PARENT)
    if parent is not None:
        tracking.reopen_run(uri, parent)
        return parent
    axes = ", ".join(f"{k} in {v}" for k, v in spec.grid.items())
    tags = {"nanoact.role": "parent", "nanoact.study": spec.study_name, "nanoact.version": nanoact.__version__,
            "nanoact.grid": json.dumps(spec.grid), "nanoact.sweep_source": spec.source,
            "nanoact.n_cells": str(len(spec.cells())), "mlflow.source.name": "nanoact sweep",
            "mlflow.source.type": "LOCAL",
            "mlflow.note.content": (f"Sweep {spec.study_name}: {len(spec.cells())} cells ({axes}), one child run "
                                    f"each. `nanoact report --experiment {spec.name}{_study_arg(spec)}` logs its report "
                                    "here.")}
    params = {k: v for k, v in spec.base.flat().items() if k not in spec.grid}
    parent = tracking.create_parent_run(uri, exp_id, f"sweep-{spec.study_name}", tags, params)
    study.set_user_attr(U_PARENT, parent)
    return parent


def experiment_tags(spec: SweepSpec) -> dict[str, str]:
    """What the MLflow experiment says about itself: the sweep file's description, and its grid."""
    axes = "\n".join(f"- `{k}`: {', '.join(map(str, v))}" for k, v in spec.grid.items())
    note = (f"{spec.description or spec.name}\n\nGrid ({len(spec.cells())} cells, one run each):\n{axes}\n\n"
            f"Defined in `{spec.source}`. Compare activations: group the runs table by `activation`; analyse with "
            f"`nanoact report --experiment {spec.name}{_study_arg(spec)}`.")
    from nanoact.tracking import runs_table_view

    view_tag, view = runs_table_view(spec.grid, spec.study_name)
    return {"mlflow.note.content": note, view_tag: view,
            **{f"nanoact.grid.{k}": json.dumps(v) for k, v in spec.grid.items()}}


def _study_arg(spec: SweepSpec) -> str:
    return f" --study {spec.study_name}" if spec.study_name != spec.name else ""


def enqueue(spec: SweepSpec, study, *, retry_failed: bool = False, max_deaths: int | None = None) -> list[str]:
    """Enqueue the cells that have to run: missing and interrupted ones (failed ones too with ``retry_failed``),
    each with its values as the trial's params. ``max_deaths`` leaves alone a cell interrupted that often (a cell
    that kills its workers is not retried for ever by running workers; a new ``nanoact sweep`` retries it). Call it
    holding the coordinator lease."""
    trials = study.get_trials(deepcopy=False)
    todo = []
    for s in S.cell_states(spec, trials):
        if not _to_enqueue(s.state, retry_failed):
            continue
        if max_deaths is not None and _deaths(trials, s.cell.key) >= max_deaths:
            continue
        attrs: dict[str, Any] = {S.A_GRID_KEY: s.cell.key, S.A_CELL: json.dumps(s.cell.values)}
        if s.trial_number is not None:
            attrs[S.A_RETRY_OF] = s.trial_number
        study.enqueue_trial(dict(s.cell.values), user_attrs=attrs)
        todo.append(s.cell.key)
    return todo


def _to_enqueue(state: S.CellStatus, retry_failed: bool) -> bool:
    """Missing and interrupted cells are enqueued; failed ones too with ``retry_failed``."""
    return state in S.TO_RUN or (retry_failed and state == S.CellStatus.FAILED)


def _deaths(trials, key: str) -> int:
    return sum(bool(t.user_attrs.get(S.A_INTERRUPTED)) for t in trials if t.user_attrs.get(S.A_GRID_KEY) == key)


def requeue_lost(spec: SweepSpec, study, storage, leases, uri: str, events: EventFn) -> None:
    """While a sweep runs: settle dead workers' trials and enqueue their cells again (an idle worker's job)."""
    lease = hold(leases, COORDINATOR)
    try:
        for line in recover(study, storage, leases, uri):
            events({"event": "recovered", "detail": line})
        enqueue(spec, study, max_deaths=MAX_DEATHS)
    finally:
        lease.release()


def finish(spec: SweepSpec, ctx: WorkerContext, result: S.SweepResult) -> S.SweepResult:
    """The grid's state at the end of the call; the parent run ends when nothing runs or waits any more."""
    from nanoact import tracking

    study = load_study(spec, ctx.storage)
    result.states = S.cell_states(spec, study.get_trials(deepcopy=False))
    if result.count(*S.BUSY) == 0:
        status = "KILLED" if result.interrupted else ("FINISHED" if result.complete else "FAILED")
        tracking.end_run(ctx.tracking_uri, ctx.parent_run_id, status)
    return result


def _check_corpora(spec: SweepSpec) -> None:
    """A missing or corrupt corpus is a one-line error before anything is created or trained."""
    from nanoact.data import resolve_corpus

    for corpus, cache in {(c.data.corpus, c.data.cache_dir) for c in map(spec.cell_config, spec.cells())}:
        resolve_corpus(corpus, cache or None)
