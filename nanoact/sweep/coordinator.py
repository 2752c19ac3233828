"""The coordinator step of a sweep, and its end.

``prepare`` creates (or resumes) the study and the MLflow parent run, settles trials whose workers died, and
enqueues every cell that has to run, each as a WAITING trial whose params are the cell's values. Any number of
processes may run it at once, on one machine or many: they take the study's coordinator lease in turn, so the
study and the parent run are created once and no cell is enqueued twice. ``finish`` ends the parent run once
no cell is running or queued any more.
"""

from __future__ import annotations

import contextlib
import json
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

from nanoact.errors import NanoactError
from nanoact.events import Recovered, Waiting, Warned
from nanoact.sweep import recovery, rounds
from nanoact.sweep import state as S
from nanoact.sweep.handle import StudyHandle
from nanoact.sweep.leases import Leases, hold, open_leases
from nanoact.sweep.options import EventFn, SweepOptions, WorkerContext
from nanoact.sweep.recovery import COORDINATOR, MAX_DEATHS, close_interrupted, recover
from nanoact.sweep.spec import SweepSpec
from nanoact.sweep.storage import open_storage, storage_exists
from nanoact.tracking import schema

U_PARENT = "mlflow_parent_run_id"
U_FINGERPRINT = "nanoact.fingerprint"
S_FINGERPRINTED = "nanoact:fingerprinted"  # study system attr: the config and grid the fingerprint covers
U_NONCE = "nanoact.nonce"  # per study, also a tag of its parent run: a parent run orphaned by a kill is found by it
T_NONCE = schema.STUDY_NONCE
ORPHAN_AGE_S = 600.0  # a parent run with the nonce but unrecorded this long was left by a creator that died
REQUEUE_WAIT_S = 5.0  # how long a running worker waits for the coordinator lease to enqueue lost cells


def prepare(spec: SweepSpec, opts: SweepOptions, events: EventFn) -> tuple[S.SweepResult, WorkerContext | None]:
    """The coordinator step (see the module docstring). With ``opts.dry_run`` nothing is created or changed."""
    from nanoact import tracking
    from nanoact.cluster import check_stores
    from nanoact.tracking import check_tracking_server
    from nanoact.tracking_uri import resolve_tracking_uri

    _check_corpora(spec)
    uri = resolve_tracking_uri(opts.tracking_uri)
    if opts.dry_run:
        return _plan_only(spec, opts), None
    for line in check_stores(opts.storage_url, uri):  # refuses stores unsafe for the hosts that may share them
        events(Warned(line))
    check_tracking_server(uri)
    tracking.open_store(uri)
    storage = open_storage(opts.storage_url)
    leases = open_leases(opts.storage_url, spec.study_name)
    try:  # the coordinator lease is held for storage writes only, never across an MLflow call
        study, stalled = _open_study(spec, opts.storage_url, storage, leases, events)
        handle = StudyHandle(study, storage, leases, uri)
        exp_id = tracking.ensure_experiment(uri, spec.name, experiment_tags(spec))
        parent = _parent_run(spec, handle, exp_id)
        recovered = recover(handle)  # each dead trial under its own cell's lease
        spec_n = rounds.current(spec, study)  # a seed rule's current round; its next is left to the workers
        recovered += close_interrupted(S.cell_states(spec_n, study.get_trials(deepcopy=False)), uri)
        for line in recovered:
            events(Recovered(line))
        lease = None if stalled else _hold_coordinator(spec, leases, events)
        if lease is not None:
            try:
                planned = enqueue_round(spec_n, study, retry_failed=opts.retry_failed)
            finally:
                lease.release()
        else:
            planned = []
            events(Waiting(f"{_stalled(spec, leases)}; training the cells already queued, enqueueing none"))
        rounds.sync_parent(spec, study, uri, parent)  # redone after a kill between a round's record and this
        states = S.cell_states(spec_n, study.get_trials(deepcopy=False))
    finally:
        leases.close()
    result = S.SweepResult(spec.study_name, exp_id, parent, states, planned=planned, recovered=recovered,
                           rounds_left=not rounds.finished(spec, study))
    return result, WorkerContext(spec, opts.storage_url, uri, exp_id, parent, plugins=opts.plugins,
                                 train_log=opts.train_log, system_metrics=opts.system_metrics)


def _open_study(spec: SweepSpec, storage_url: str | None, storage, leases: Leases, events: EventFn):
    """``(study, stalled)``: the study, loaded or created under the coordinator lease; or, when another process
    holds that lease for too long (``stalled``), the study as it is, if complete: it can be worked on, without
    enqueueing."""
    lease = _hold_coordinator(spec, leases, events)
    if lease is not None:
        try:
            return _load_or_create(spec, storage), False
        finally:
            lease.release()
    study = load_study(spec, storage_url)  # a stopped or hung holder
    if study is None or U_NONCE not in study.user_attrs or U_PARENT not in study.user_attrs:
        raise _stalled(spec, leases)
    check_fingerprint(spec, study)
    return study, True


def _hold_coordinator(spec: SweepSpec, leases: Leases, events: EventFn):
    """The coordinator lease, or None after ``COORDINATOR_WAIT_S`` (saying once, after a second, who holds it)."""
    return hold(leases, COORDINATOR, timeout=recovery.COORDINATOR_WAIT_S, on_wait=lambda: events(Waiting(
        f"the coordinator lease of study {spec.study_name} is held by "
        f"{leases.holder(COORDINATOR) or 'another process'}; waiting up to {recovery.COORDINATOR_WAIT_S:.0f} s")))


def _stalled(spec: SweepSpec, leases: Leases) -> NanoactError:
    return NanoactError(
        f"the coordinator lease of study {spec.study_name} has been held for over {recovery.COORDINATOR_WAIT_S:.0f} s "
        f"by {leases.holder(COORDINATOR) or 'another process'} (a stopped or hung process? resume or end it, then "
        "run the same command again)")


def _plan_only(spec: SweepSpec, opts: SweepOptions) -> S.SweepResult:
    study = load_study(spec, opts.storage_url)
    check = study_check(spec, study, open_storage(opts.storage_url) if study is not None else None)
    if study is not None and check.matches:
        spec = rounds.current(spec, study)  # a seed rule's current round
    states = S.cell_states(spec, study.get_trials(deepcopy=False) if study is not None else None)
    # WAITING: queued by an earlier call and not yet taken, so it runs too
    todo = [s.cell.key for s in states if s.state == S.CellStatus.WAITING or _to_enqueue(s.state, opts.retry_failed)]
    return S.SweepResult(spec.study_name, None, None, states, planned=todo, study_check=check)


@dataclass(frozen=True)
class StudyCheck:
    """What a dry run says of the study: whether it exists, and whether the real run would accept this config.
    ``differences`` are ``(key, in the study, here)``, known when the study recorded what its fingerprint covers."""

    exists: bool
    matches: bool = True
    differences: tuple[tuple[str, Any, Any], ...] = ()


def study_check(spec: SweepSpec, study, storage) -> StudyCheck:
    if study is None:
        return StudyCheck(exists=False)
    fp = study.user_attrs.get(U_FINGERPRINT)
    if fp is None or fp == spec.fingerprint():  # no fingerprint: a half-created study, completed by the real run
        return StudyCheck(exists=True)
    recorded = storage.get_study_system_attrs(storage.get_study_id_from_name(spec.study_name)).get(S_FINGERPRINTED)
    if not isinstance(recorded, dict):  # made by an older nanoact: the difference cannot be named
        return StudyCheck(exists=True, matches=False)
    here = json.loads(json.dumps(spec.fingerprinted(), default=str))
    diffs = []
    for part, prefix in (("base", ""), ("grid", "grid ")):
        old, new = recorded.get(part, {}), here[part]
        diffs += [(prefix + k, old.get(k, "(not set)"), new.get(k, "(not set)"))
                  for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return StudyCheck(exists=True, matches=False, differences=tuple(diffs))


def load_study(spec: SweepSpec, storage_url: str | None):
    """The study, or None when it does not exist (nothing is created)."""
    import optuna

    if not storage_exists(storage_url):
        return None
    try:
        return optuna.load_study(study_name=spec.study_name, storage=open_storage(storage_url))
    except KeyError:
        return None


def _load_or_create(spec: SweepSpec, storage):
    """The study, created with its attrs. Call it holding the coordinator lease: Optuna creates a study and sets
    its attrs in separate writes, so a creator killed in between (or Ctrl-C) leaves a study without fingerprint,
    which is completed here, before anything else uses it."""
    import optuna

    try:
        study = optuna.load_study(study_name=spec.study_name, storage=storage)
    except KeyError:
        study = optuna.create_study(study_name=spec.study_name, storage=storage, direction="minimize")
    if U_FINGERPRINT not in study.user_attrs:
        _complete(spec, study, storage)
        save_dashboard_note(storage, spec)
    check_fingerprint(spec, study)
    if U_NONCE not in study.user_attrs:  # a study of an older nanoact
        study.set_user_attr(U_NONCE, uuid.uuid4().hex)
    return study


def _complete(spec: SweepSpec, study, storage) -> None:
    """Set the attrs of a study that has none yet: just created, or half-created by a creator that was killed.
    Its trials (a half-created study has none; a study of an older nanoact may) must be cells of this grid."""
    from nanoact.errors import ConfigError

    keys = {c.key for c in spec.cells()}
    strange = sorted({str(t.user_attrs.get(S.A_GRID_KEY)) for t in study.get_trials(deepcopy=False)} - keys)
    if strange:
        raise ConfigError(f"study {spec.study_name!r} holds trials of cells not in this grid ({strange[0]}, ...) "
                          "and no record of the grid it was made for; start a new study with --study NAME")
    with warnings.catch_warnings():  # experimental since Optuna 3.2; shown by optuna-dashboard
        warnings.simplefilter("ignore")
        study.set_metric_names(["final val loss"])
    study.set_user_attr(U_NONCE, uuid.uuid4().hex)
    # what the fingerprint covers, for a dry run to name what differs (a system attr: optuna-dashboard shows user
    # attrs, and this one is long)
    storage.set_study_system_attr(storage.get_study_id_from_name(spec.study_name), S_FINGERPRINTED,
                                  json.loads(json.dumps(spec.fingerprinted(), default=str)))
    # the fingerprint last: a study that has it is complete
    for k, v in {"nanoact.experiment": spec.name, "nanoact.description": spec.description,
                 schema.GRID: spec.grid, "nanoact.source": spec.source, U_FINGERPRINT: spec.fingerprint()}.items():
        study.set_user_attr(k, v)


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


def _parent_run(spec: SweepSpec, handle: StudyHandle, exp_id: str) -> str:
    """The study's parent run: the recorded one, reopened; else one that a creator killed before recording it
    left (found by the study's nonce), adopted; else a new one, recorded under the coordinator lease (a racing
    creator's record wins, and the loser trashes its own run). A run with the nonce that is not the parent and
    older than ``ORPHAN_AGE_S`` (a second orphan) is ended and moved to MLflow's trash: such runs never have
    children."""
    from nanoact import tracking

    study, leases, uri = handle.study, handle.leases, handle.tracking_uri
    nonce = study.user_attrs[U_NONCE]
    parent = study.user_attrs.get(U_PARENT)
    mine = None
    if parent is None:
        tagged = tracking.runs_tagged(uri, exp_id, T_NONCE, nonce)
        mine = tagged[0][0] if tagged else _new_parent_run(spec, uri, exp_id, nonce)
        lease = hold(leases, COORDINATOR, timeout=recovery.COORDINATOR_WAIT_S)
        if lease is None:
            raise _stalled(spec, leases)
        try:
            parent = study.user_attrs.get(U_PARENT)
            if parent is None:
                study.set_user_attr(U_PARENT, mine)
                parent = mine
        finally:
            lease.release()
    tracking.reopen_run(uri, parent)
    why = (f"a second parent run of study {spec.study_name} (its creator was stopped before recording it, or lost "
           f"the race to); the parent run is {parent}")
    for run_id, age in tracking.runs_tagged(uri, exp_id, T_NONCE, nonce):
        if run_id != parent and (run_id == mine or age > ORPHAN_AGE_S):
            with contextlib.suppress(Exception):  # another coordinator step may be ending it right now
                tracking.delete_run(uri, run_id, why)
    return parent


def _new_parent_run(spec: SweepSpec, uri: str, exp_id: str, nonce: str) -> str:
    import nanoact
    from nanoact import tracking

    axes = ", ".join(f"{k} in {v}" for k, v in spec.grid.items())
    note = (f"Sweep {spec.study_name}: {len(spec.cells())} cells ({axes}), one child run each. "
            f"`nanoact report --experiment {spec.name}{_study_arg(spec)}` logs its report here.")
    tags = schema.parent_tags(study=spec.study_name, version=nanoact.__version__, grid=spec.grid,
                              sweep_source=spec.source, n_cells=len(spec.cells()), nonce=nonce, note=note)
    params = {k: v for k, v in spec.base.flat().items() if k not in spec.grid}
    return tracking.create_parent_run(uri, exp_id, f"sweep-{spec.study_name}", tags, params)


def experiment_tags(spec: SweepSpec) -> dict[str, str]:
    """What the MLflow experiment says about itself: the sweep file's description, and its grid."""
    axes = "\n".join(f"- `{k}`: {', '.join(map(str, v))}" for k, v in spec.grid.items())
    note = (f"{spec.description or spec.name}\n\nGrid ({len(spec.cells())} cells, one run each):\n{axes}\n\n"
            f"Defined in `{spec.source}`. Compare activations: group the runs table by `activation`; analyse with "
            f"`nanoact report --experiment {spec.name}{_study_arg(spec)}`.")
    from nanoact.tracking import runs_table_view

    view_tag, view = runs_table_view(spec.grid, spec.study_name)
    return {schema.NOTE: note, view_tag: view, **schema.experiment_grid_tags(spec.grid)}


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


def enqueue_round(spec_n: SweepSpec, study, **kw) -> list[str]:
    """``enqueue`` for the cells of a seed rule's current round, after setting the study's declared grid (user
    attr ``nanoact.grid``) to the round's seeds. Call it holding the coordinator lease."""
    if spec_n.seed_rule is not None and study.user_attrs.get(schema.GRID) != spec_n.grid:
        study.set_user_attr(schema.GRID, spec_n.grid)
    return enqueue(spec_n, study, **kw)


def _to_enqueue(state: S.CellStatus, retry_failed: bool) -> bool:
    """Missing and interrupted cells are enqueued; failed ones too with ``retry_failed``."""
    return state in S.TO_RUN or (retry_failed and state == S.CellStatus.FAILED)


def _deaths(trials, key: str) -> int:
    return sum(bool(t.user_attrs.get(S.A_INTERRUPTED)) for t in trials if t.user_attrs.get(S.A_GRID_KEY) == key)


def requeue_lost(spec: SweepSpec, handle: StudyHandle, events: EventFn) -> bool:
    """While a sweep runs: settle dead workers' trials (each under its cell's lease) and enqueue their cells again
    (an idle worker's job). The enqueueing needs the coordinator lease, and is skipped this round when another
    process holds it for more than ``REQUEUE_WAIT_S`` (False): the caller trains on rather than wait on a holder
    that may be stopped. (A live holder holds it for a few storage writes; waiting that long lets a worker that
    settled a trial enqueue its cell after a holder that enqueued before the trial was settled.)"""
    for line in recover(handle):
        events(Recovered(line))
    lease = hold(handle.leases, COORDINATOR, timeout=REQUEUE_WAIT_S)
    if lease is None:
        return False
    try:
        enqueue_round(rounds.current(spec, handle.study), handle.study, max_deaths=MAX_DEATHS)
    finally:
        lease.release()
    return True


def finish(spec: SweepSpec, ctx: WorkerContext, result: S.SweepResult) -> S.SweepResult:
    """The grid's state at the end of the call; the parent run ends when nothing runs or waits any more."""
    from nanoact import tracking

    study = load_study(spec, ctx.storage_url)
    result.states = S.cell_states(rounds.current(spec, study), study.get_trials(deepcopy=False))
    result.rounds_left = not rounds.finished(spec, study)
    if result.rounds_left and not result.interrupted and result.count(S.CellStatus.FAILED) == 0:
        return result  # another process is deciding or enqueueing the next round: the parent run goes on
    # after Ctrl-C, cells still queued wait for the next call: the parent run ends unless a cell is running
    if result.count(*S.BUSY) == 0 or (result.interrupted and result.count(S.CellStatus.RUNNING) == 0):
        status = "KILLED" if result.interrupted else ("FINISHED" if result.complete else "FAILED")
        tracking.end_run(ctx.tracking_uri, ctx.parent_run_id, status)
    return result


def _check_corpora(spec: SweepSpec) -> None:
    """A missing or corrupt corpus is a one-line error before anything is created or trained."""
    from nanoact.data import resolve_corpus

    if not any(k in spec.grid for k in ("data.corpus", "data.cache_dir")):  # one corpus for every cell
        resolve_corpus(spec.base.data.corpus, spec.base.data.cache_dir or None)
        return
    for corpus, cache in {(c.data.corpus, c.data.cache_dir) for c in map(spec.cell_config, spec.cells())}:
        resolve_corpus(corpus, cache or None)
