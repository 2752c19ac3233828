"""The progress events of a training run and of a sweep, as frozen dataclasses.

The trainer, the sweep's coordinator and workers emit them; ``nanoact.progress`` renders them; with
``--workers N`` they cross a process boundary (``nanoact.sweep.pool``), so each pickles under ``spawn``. A
consumer matches on the class (``isinstance`` or ``match``) and reads typed fields, never dict keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from nanoact.tracking import schema as S

# -- one training run (nanoact.trainer) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Iterated:
    """Every 10th training iteration: the current batch's loss and the learning rate."""

    iter: int
    max_iters: int
    loss: float
    lr: float


@dataclass(frozen=True)
class Evaluating:
    """An eval step starts (its loss evals and predictions take a while)."""

    iter: int
    max_iters: int


@dataclass(frozen=True)
class Evaluated:
    """An eval step's results: losses and top-1 accuracy on the fixed batches, and training throughput since
    the previous eval step (0 when no iteration ran in between)."""

    iter: int
    max_iters: int
    train_loss: float
    val_loss: float
    train_acc: float
    val_acc: float
    lr: float
    tokens_per_s: float

    def metrics(self) -> dict[str, float]:
        """The row the tracker logs at this step, under the run schema's metric names."""
        return {S.TRAIN_LOSS: self.train_loss, S.VAL_LOSS: self.val_loss, S.TRAIN_ACC: self.train_acc,
                S.VAL_ACC: self.val_acc, S.LR: self.lr, S.TOKENS_PER_S: self.tokens_per_s}


TrainEvent = Union[Iterated, Evaluating, Evaluated]

# -- a sweep (nanoact.sweep) ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """The grid as this call found it after the coordinator step."""

    total: int
    done: int
    todo: int  # queued now, or by an earlier call that was stopped
    running: int  # in other workers
    recovered: tuple[str, ...] = ()


@dataclass(frozen=True)
class Note:
    """A line to show as it is."""

    detail: str


@dataclass(frozen=True)
class Recovered(Note):
    """A dead worker's trial settled, or an interrupted run closed."""


@dataclass(frozen=True)
class Waiting(Note):
    """Waiting for a lease another process holds."""


@dataclass(frozen=True)
class Notice(Note):
    """Something the user should know that is not a problem (fewer workers than asked, ...)."""


@dataclass(frozen=True)
class Warned(Note):
    """A risk the sweep goes on with (a store on a file system unsafe for several hosts, ...)."""


@dataclass(frozen=True)
class OfCell:
    """An event of the cell ``key`` that the worker ``worker`` trains."""

    worker: str
    key: str


@dataclass(frozen=True)
class OfTrial(OfCell):
    """An event of the cell's Optuna trial ``trial``."""

    trial: int


@dataclass(frozen=True)
class CellStarted(OfTrial):
    """A worker starts training the cell."""


@dataclass(frozen=True)
class CellTraining(OfCell):
    """A trainer's event, from the cell's training run."""

    event: TrainEvent


@dataclass(frozen=True)
class CellDone(OfCell):
    metrics: dict[str, float]  # the run's final metrics


@dataclass(frozen=True)
class CellFailed(OfCell):
    error: str


@dataclass(frozen=True)
class LeaseLost(OfTrial):
    """Another process holds this cell's lease now (its lock file deleted?): the run may be settled as dead."""


@dataclass(frozen=True)
class CellLost(OfTrial):
    """The cell's trial was settled as dead while it trained: this run does not count."""


@dataclass(frozen=True)
class Idle:
    """The queue is empty, but cells still run in other workers."""

    worker: str
    running: int


@dataclass(frozen=True)
class WorkerDied:
    worker: str
    exitcode: int | None


@dataclass(frozen=True)
class WorkerFailed:
    """A worker process stopped on a user error (e.g. the database stayed away); the sweep fails with it."""

    worker: str
    error: str


@dataclass(frozen=True)
class WorkerEnded:
    worker: str
    trained: int
    failed: int


@dataclass(frozen=True)
class RoundAnalysing:
    """Every cell of a round of a seed rule is done: its interim analysis starts (it reads MLflow)."""

    round: int
    seeds: int


@dataclass(frozen=True)
class RoundDecided:
    """A round's interim decision, as recorded in the study (``nanoact.sweep.rounds``)."""

    round: int
    previous_seeds: int  # seeds per activation before this round (0 for the first)
    seeds: int
    widest: dict[str, float]  # metric -> widest widened 95% half-width of its primary contrasts
    targets: dict[str, float]
    met: dict[str, bool]
    stop: bool
    reason: str  # "target met", "max seeds reached", or "" when going on
    next_seeds: int
    new_cells: int  # cells the next round adds (0 when stopping)


SweepEvent = Union[Planned, Note, CellStarted, CellTraining, CellDone, CellFailed, Idle, LeaseLost, CellLost,
                   WorkerDied, WorkerFailed, WorkerEnded, RoundAnalysing, RoundDecided]
Event = Union[TrainEvent, SweepEvent]
EventFn = Callable[[Event], None]
"""What the trainer and the sweep call with each event."""
