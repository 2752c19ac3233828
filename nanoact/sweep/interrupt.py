"""SIGTERM ends a sweep's current cell as interrupted, as Ctrl-C does.

Slurm sends SIGTERM before it kills a task (at ``scancel``, at preemption, and before the time limit with
``#SBATCH --signal``), then SIGKILL ``KillWait`` seconds later (30 by default). Python's default for SIGTERM
is to die on the spot, which would leave the cell's trial RUNNING until another worker settles it as dead. Here
the first SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``) in the main thread instead: the trainer ends
its MLflow run KILLED, the worker marks the trial interrupted, and the cell runs again.

A signal can arrive while Python runs a finalizer (a ``__del__`` or weakref callback, e.g. SQLAlchemy's),
where an exception is dropped (Python would print it as "Exception ignored"; here it prints nothing). So the
interruption is also kept pending, and ``check()`` (called by the worker every iteration, while idle and between
cells, and by ``--workers N``'s parent as it waits) raises it again until it is delivered.

After the first SIGINT or SIGTERM, further SIGTERMs are ignored (they would break the ending of the cell; Slurm
signals every process of a task, and ``nanoact sweep --workers N`` also forwards the signal to its workers),
and SIGINT gets Python's default again: a second Ctrl-C still stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

from nanoact.errors import Terminated


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, the first SIGTERM raises ``Terminated`` (and the first SIGINT ``KeyboardInterrupt``) in
    the main thread; outside it, the previous handlers are back. Does nothing off the main thread (where Python
    cannot install signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    # a signal someone chose to ignore (nohup, a background job's SIGINT) stays ignored
    ours = [s for s, default in defaults.items() if signal.getsignal(s) is default]

    def on_signal(signum, frame):
        if signal.SIGTERM in ours:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cell is being ended: one interruption is enough
        if signal.SIGINT in ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _pending[:] = [Terminated if signum == signal.SIGTERM else KeyboardInterrupt]
        check()

    old = {s: signal.signal(s, on_signal) for s in ours}
    old_hook = sys.unraisablehook

    def unraisable(info) -> None:  # dropped in a finalizer: it stays pending, no "Exception ignored" traceback
        if not (_pending and isinstance(info.exc_value, KeyboardInterrupt)):
            old_hook(info)

    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        _pending.clear()
        sys.unraisablehook = old_hook
        for s, handler in old.items():
            signal.signal(s, handler)


_pending: list[type[KeyboardInterrupt]] = []  # the interruption not yet delivered (see the module docstring)


def exception() -> KeyboardInterrupt:
    """The pending interruption as an exception (``Terminated`` for SIGTERM)."""
    return _pending[0]("SIGTERM" if _pending[0] is Terminated else "")


def check() -> None:
    """Raise the pending interruption, if any (a no-op outside ``interruptible``)."""
    if _pending:
        raise exception()


def pending() -> bool:
    """An interruption arrived and did not reach the code that ends the cell (an exception raised meanwhile, e.g.
    by a module whose import it cut short, is its consequence)."""
    return bool(_pending)


def delivered() -> None:
    """The interruption reached the code that ends the cell: ``check()`` stops raising it."""
    _pending.clear()


def exit_code(e: BaseException) -> int:
    """The shell's convention: 128 + the signal's number (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
