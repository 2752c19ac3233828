"""Liveness and recovery: how a sweep knows that a cell's worker died, and what it does then.

**One mechanism: a lease per cell that the operating system (or the database server) releases when its holder
dies.** A worker takes the lease of the cell it pops *before* it trains and gives it back only *after* its trial is
COMPLETE or FAILED. A RUNNING trial whose cell lease anyone can take is therefore dead: its worker was killed
(``kill -9``, out of memory, a lost machine) at some point between popping the trial and finishing it. Nothing
depends on process ids or host names, so PID namespaces (a sweep running as PID 1 in a container), recycled
PIDs and renamed hosts change nothing. The lease is named by the study and the cell, never recorded on the trial,
so there is no window between popping a trial and "registering" its worker.

The leases are ``flock`` locks beside a storage file, or PostgreSQL advisory locks (``nanoact.sweep.leases``).

Recovery of a dead trial (``recover``) takes the cell's lease itself, so two recoverers never act on one trial,
and then: if the trial's MLflow run FINISHED (the worker died between the run's end and the trial's COMPLETE),
the trial is **adopted**: completed with that run's final val loss, not retrained. Otherwise the run becomes
KILLED with the reason, and the trial FAIL with ``nanoact.interrupted``, so the cell runs again. A worker that
pops a trial and then finds that recovery failed it meanwhile (or that the cell is taken) drops it untrained.

A worker stopped by a full or read-only store tells its trial interrupted (a short journal append may still fit)
but may not be able to end its MLflow run; ``close_interrupted`` KILLs such a run before its cell runs again.
"""

from __future__ import annotations

from typing import Any

from nanoact.sweep import state as S
from nanoact.sweep.handle import StudyHandle
from nanoact.tracking import schema

COORDINATOR = "__coordinator__"  # the lease that serialises coordinator steps (study, parent run, enqueueing)
COORDINATOR_WAIT_S = 60.0  # the longest a process waits for the coordinator lease (it is held for storage writes
# only, never across MLflow or other network calls: a holder stopped or hung that long is not coming back soon)
MAX_DEATHS = 3  # a cell interrupted this often is left to the next `nanoact sweep` (e.g. it runs out of memory)


def recover(handle: StudyHandle) -> list[str]:
    """Settle every RUNNING trial whose worker is dead (its cell lease is free): adopt a FINISHED run, else
    interrupt the trial and KILL its run. Returns one line per trial settled."""
    from optuna.trial import TrialState

    done = []
    for t in handle.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        key = t.user_attrs.get(S.A_GRID_KEY)
        lease = handle.leases.try_hold(key) if key is not None else None
        if lease is None:
            continue  # alive (or not one of ours)
        try:
            if handle.trial(t.number).state == TrialState.RUNNING:
                done.append(_settle(handle, t.number, key))
        finally:
            lease.release()
    return done


def close_interrupted(states, tracking_uri: str) -> list[str]:
    """KILL the MLflow run of every interrupted cell whose run is still RUNNING; one line per run ended.

    Its trial is settled, so its worker is done with it (``recover`` never sees it): the run is dead."""
    from nanoact import tracking

    reason = "its worker stopped before it could end this run (e.g. the store was full); the cell runs again"
    return [f"interrupted {s.cell.key}: run {s.run_id} of trial {s.trial_number} KILLED"
            for s in states if s.state == S.CellStatus.INTERRUPTED and s.run_id
            and tracking.end_run(tracking_uri, s.run_id, "KILLED", reason, only_if_running=True)]


def _settle(handle: StudyHandle, number: int, key: str) -> str:
    from optuna.trial import TrialState

    from nanoact import tracking

    study, tracking_uri = handle.study, handle.tracking_uri
    run = tracking.find_trial_run(tracking_uri, study.study_name, number)
    final = tracking.final_metrics(run) if run is not None and run.info.status == "FINISHED" else None
    if final is not None and schema.FINAL_VAL_LOSS in final:
        handle.set_trial_attrs(number, {S.A_RUN_ID: run.info.run_id, **S.final_attrs(final), S.A_ADOPTED: True})
        study.tell(number, _value(final[schema.FINAL_VAL_LOSS]), skip_if_finished=True)
        return f"adopted {key}: trial {number}'s run {run.info.run_id} had finished before its worker died"
    reason = "its worker died while training (its lease was released); the cell runs again"
    ended = run is not None and tracking.end_run(tracking_uri, run.info.run_id, "KILLED", reason,
                                                 only_if_running=True)
    handle.set_trial_attrs(number, {S.A_INTERRUPTED: True, S.A_ERROR: reason,
                                    **({S.A_RUN_ID: run.info.run_id} if run is not None else {})})
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    if run is None:
        return f"interrupted {key}: trial {number}'s worker died"
    # a run its worker ended already (FAILED when the database went away) keeps that status
    return f"interrupted {key}: trial {number}'s worker died; run {run.info.run_id} " + (
        "KILLED" if ended else f"left {run.info.status}")


def _value(v: Any) -> float:
    import math

    v = float(v)
    return v if math.isfinite(v) else float("inf")
