"""A sweep's study as one process works on it: ``StudyHandle``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nanoact.sweep.leases import Lease, Leases, open_leases
from nanoact.sweep.storage import open_storage


@dataclass(frozen=True)
class StudyHandle:
    """The Optuna study of a sweep with what every step on it needs: the Optuna storage object it was loaded from
    (nanoact's own calls share its trial cache), the study's leases, and the MLflow store of its runs."""

    study: Any  # optuna.Study
    storage: Any  # optuna.storages.BaseStorage, as ``open_storage`` returns it
    leases: Leases
    tracking_uri: str

    @classmethod
    def open(cls, storage_url: str | None, study_name: str, tracking_uri: str) -> StudyHandle:
        """The existing study ``study_name`` at ``storage_url``, with leases of its own (``KeyError`` when there
        is no such study). ``close`` gives the leases back."""
        import optuna

        storage = open_storage(storage_url)
        study = optuna.load_study(study_name=study_name, storage=storage)
        return cls(study, storage, open_leases(storage_url, study_name), tracking_uri)

    @property
    def study_name(self) -> str:
        return self.study.study_name

    def close(self) -> None:
        self.leases.close()

    def pop(self, axes: dict[str, list[Any]]) -> tuple[Any, Lease] | None:
        """Take one WAITING trial off the study's queue, with its cell's lease: ``(trial, lease)``, or None when no
        waiting trial's cell is free. The lease is taken *before* the trial turns RUNNING, so a RUNNING trial whose
        lease is free is always a dead one (``nanoact.sweep.recovery``). The trial comes as an ``optuna.Trial``
        with its enqueued params set (``axes``: the grid, for Optuna's categorical distributions).

        The only place nanoact reaches below Optuna's public API (``optuna.Trial`` built from a trial id):
        ``study.ask()`` would create a trial without params whenever the queue is empty, and such pseudo-trials
        would sit in the record. The WAITING -> RUNNING update is atomic in every storage: no two workers pop one
        trial.
        """
        import optuna
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        from nanoact.sweep.state import A_GRID_KEY

        storage = self.storage
        study_id = storage.get_study_id_from_name(self.study_name)
        for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
            lease = self.leases.try_hold(frozen.user_attrs.get(A_GRID_KEY))
            if lease is None:
                continue  # its cell is being trained or checked right now
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
            try:
                popped = storage.set_trial_state_values(trial_id, TrialState.RUNNING)
            except UpdateFinishedTrialError:
                popped = False
            if not popped:
                lease.release()
                continue
            trial = optuna.Trial(self.study, trial_id)
            for name, choices in axes.items():  # Optuna returns the enqueued value, never a pick of its own
                trial.suggest_categorical(name, choices)
            return trial, lease
        return None

    def trial(self, number: int):
        """Trial ``number`` as the storage holds it now (``optuna.trial.FrozenTrial``)."""
        return self.storage.get_trial(self._trial_id(number))

    def set_trial_attrs(self, number: int, attrs: dict[str, Any]) -> None:
        """User attrs on any trial of the study (by number), e.g. one a dead worker left RUNNING."""
        trial_id = self._trial_id(number)
        for k, v in attrs.items():
            self.storage.set_trial_user_attr(trial_id, k, v)

    def _trial_id(self, number: int) -> int:
        study_id = self.storage.get_study_id_from_name(self.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
