"""SIGTERM ends a sweep's current cell as interrupted, as Ctrl-C does.

Slurm sends SIGTERM before it kills a task (at ``scancel``, at preemption, and before the time limit with
``#SBATCH --signal``), then SIGKILL ``KillWait`` seconds later (30 by default). Python's default for SIGTERM
is to die on the spot, which would leave the cell's trial RUNNING until another worker settles it as dead. Here
the first SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``) in the main thread instead: the trainer ends
its MLflow run KILLED, the worker marks the trial interrupted, and the cell runs again.

After the first SIGINT or SIGTERM, further SIGTERMs are ignored (they would break the ending of the cell; Slurm
signals every process of a task, and ``nanoact sweep --workers N`` also forwards the signal to its workers),
and SIGINT gets Python's default again: a second Ctrl-C still stops at once.
"""

from __future__ import annotations

import contextlib
import signal
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
        if signum == signal.SIGTERM:
            raise Terminated("SIGTERM")
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in ours}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def exit_code(e: BaseException) -> int:
    """The shell's convention: 128 + the signal's number (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
