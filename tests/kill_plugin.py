"""Fault injection for the kill-stage tests, loaded into a sweep with ``--plugin kill_plugin``.

``NANOACT_KILL_AT`` says where the worker SIGKILLs itself, the first time it gets there:
- ``popped``: right after a trial is taken off the queue (and its cell's lease with it), before anything else;
- ``finished``: after the cell's MLflow run is FINISHED, before its trial is COMPLETE.
``NANOACT_KILL_AFTER`` (default 0) lets that many cells pass first.
"""

import os
import signal

from nanoact.sweep import worker

_STAGE = os.environ.get("NANOACT_KILL_AT", "")
_seen = [int(os.environ.get("NANOACT_KILL_AFTER", "0"))]


def _due() -> bool:
    _seen[0] -= 1
    return _seen[0] < 0


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_pop = worker.pop_trial
_end = worker.Worker._end


def pop_then_die(study, storage, axes, leases):
    popped = _pop(study, storage, axes, leases)
    if popped is not None and _due():
        _die()
    return popped


def end_but_die_first(self, trial, key, **kw):
    if kw.get("final") is not None and _due():
        _die()
    return _end(self, trial, key, **kw)


if _STAGE == "popped":
    worker.pop_trial = pop_then_die
elif _STAGE == "finished":
    worker.Worker._end = end_but_die_first
