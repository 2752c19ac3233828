"""What a sweep knows about its cells: their states (read from the study's trials) and the result of a call.

Trial user attrs written by nanoact (the study is the record; MLflow holds the runs):

- ``grid_key`` / ``cell``: the cell a trial trains (its params hold the same values, for Optuna's own tools);
- ``mlflow_run_id``: the run of this attempt; ``nanoact.worker``: a name for the worker, for people only;
- ``final_val_loss``, ``final_val_acc``, ``wall_s``: the run's final numbers, as numbers (every metric is in
  MLflow; studies made before these attrs hold ``nanoact.final``, a dict, which is still read);
- ``nanoact.error``: why the attempt failed or was interrupted;
- ``nanoact.interrupted``: the attempt was killed (Ctrl-C, SIGTERM, or its worker died), so the cell runs again;
- ``nanoact.adopted``: the worker died after its run finished; recovery completed the trial from that run;
- ``nanoact.retry_of``: the trial number of the attempt this one retries;
- ``nanoact.duplicate``: the cell was already taken when this trial was popped; it never trained.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable

from nanoact.sweep.spec import Cell, SweepSpec
from nanoact.tracking import schema

A_GRID_KEY = "grid_key"
A_CELL = "cell"
A_RUN_ID = "mlflow_run_id"
A_WORKER = "nanoact.worker"
A_FINAL = "nanoact.final"  # read only: older studies' dict of final metrics
FINAL_ATTRS = {"final_val_loss": schema.FINAL_VAL_LOSS, "final_val_acc": schema.FINAL_VAL_ACC,
               "wall_s": schema.TIME_WALL_S}
A_ERROR = "nanoact.error"
A_INTERRUPTED = "nanoact.interrupted"
A_ADOPTED = "nanoact.adopted"
A_RETRY_OF = "nanoact.retry_of"
A_DUPLICATE = "nanoact.duplicate"


class CellStatus(str, enum.Enum):
    DONE = "done"
    FAILED = "failed"  # the training failed (e.g. diverged): rerun only with --retry-failed
    INTERRUPTED = "interrupted"  # killed or its worker died: the next sweep runs it again
    RUNNING = "running"
    WAITING = "waiting"  # enqueued, not yet popped by a worker
    MISSING = "missing"  # never enqueued

    def __str__(self) -> str:
        return self.value


TO_RUN = (CellStatus.MISSING, CellStatus.INTERRUPTED)
BUSY = (CellStatus.RUNNING, CellStatus.WAITING)


@dataclass
class CellState:
    cell: Cell
    state: CellStatus
    trial_number: int | None = None
    run_id: str | None = None
    final_val_loss: float | None = None
    wall_s: float | None = None
    error: str | None = None
    attempts: int = 0


@dataclass
class SweepResult:
    """``states`` is the grid as the study holds it at the end of the call; the counts are this call's work."""

    study_name: str
    experiment_id: str | None
    parent_run_id: str | None
    states: list[CellState]
    planned: list[str] = field(default_factory=list)
    trained: int = 0  # cells this call trained to the end (FINISHED)
    failed: int = 0  # cells this call tried and that failed
    recovered: list[str] = field(default_factory=list)  # what recovery did to dead workers' trials, one line each
    interrupted: bool = False
    interrupt_exit: int = 130  # 128 + the signal that interrupted it: 130 Ctrl-C (SIGINT), 143 SIGTERM
    rounds_left: bool = False  # a seed rule has not decided to stop yet (its next round is another process's)
    study_check: Any = None  # a dry run's ``coordinator.StudyCheck``: does the study exist, would it accept this

    def count(self, *states: CellStatus) -> int:
        return sum(s.state in states for s in self.states)

    @property
    def complete(self) -> bool:
        return not self.rounds_left and all(s.state == CellStatus.DONE for s in self.states)

    @property
    def exit_code(self) -> int:
        """0: the grid is done, or what is left is running in other workers; 1: cells failed or are left to run;
        130: interrupted by Ctrl-C; 143: by SIGTERM."""
        if self.interrupted:
            return self.interrupt_exit
        if self.complete or all(s.state in (CellStatus.DONE, *BUSY) for s in self.states):
            return 0
        return 1


def cell_states(spec: SweepSpec, trials: Iterable[Any] | None) -> list[CellState]:
    """The state of every grid cell from the study's trials: a COMPLETE trial wins, else the newest attempt."""
    return states_of(spec.cells(), trials)


def states_of(cells: Iterable[Cell], trials: Iterable[Any] | None) -> list[CellState]:
    """``cell_states`` for any cells (e.g. a grid read back from a study's or a parent run's record)."""
    by_key: dict[str, list] = {}
    for t in trials or ():
        k = t.user_attrs.get(A_GRID_KEY)
        if k is not None and not t.user_attrs.get(A_DUPLICATE):
            by_key.setdefault(k, []).append(t)
    return [_cell_state(cell, sorted(by_key.get(cell.key, []), key=lambda t: t.number)) for cell in cells]


def final_attrs(final: dict[str, float]) -> dict[str, float]:
    """The trial user attrs of a finished run's metrics: a few numbers, short enough for optuna-dashboard's
    trial table."""
    return {a: float(final[m]) for a, m in FINAL_ATTRS.items() if m in final}


def _cell_state(cell: Cell, trials: list) -> CellState:
    from optuna.trial import TrialState

    cs = CellState(cell, CellStatus.MISSING, attempts=sum(t.state != TrialState.WAITING for t in trials))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    active = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    pick = complete[0] if complete else (active[-1] if active else (trials[-1] if trials else None))
    if pick is None:
        return cs
    final = {**(pick.user_attrs.get(A_FINAL) or {}),
             **{m: pick.user_attrs[a] for a, m in FINAL_ATTRS.items() if a in pick.user_attrs}}
    cs.trial_number, cs.run_id, cs.error = pick.number, pick.user_attrs.get(A_RUN_ID), pick.user_attrs.get(A_ERROR)
    cs.final_val_loss, cs.wall_s = final.get(schema.FINAL_VAL_LOSS), final.get(schema.TIME_WALL_S)
    if pick.state == TrialState.COMPLETE:
        cs.state = CellStatus.DONE
    elif pick.state == TrialState.RUNNING:
        cs.state = CellStatus.RUNNING
    elif pick.state == TrialState.WAITING:
        cs.state = CellStatus.WAITING
    elif pick.user_attrs.get(A_INTERRUPTED):
        cs.state = CellStatus.INTERRUPTED
    else:
        cs.state = CellStatus.FAILED
    return cs
