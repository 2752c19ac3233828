"""Several workers on this machine: spawned processes that send their events back to the caller's process."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
from typing import Any

from nanoact.errors import Terminated
from nanoact.events import CellTraining, Event, Iterated, WorkerDied, WorkerEnded, WorkerFailed
from nanoact.sweep import interrupt
from nanoact.sweep.interrupt import exit_code, interruptible
from nanoact.sweep.options import EventFn, WorkerContext, worker_contexts


def run_pool(ctx: WorkerContext, workers: int, devices: tuple[str, ...] | None, events: EventFn) -> tuple[int, int]:
    """Run ``workers`` worker processes to the end; returns (trained, failed) summed over them."""
    import multiprocessing as mp

    mpc = mp.get_context("spawn")
    q = mpc.Queue()
    procs = [mpc.Process(target=_worker_main, args=(wctx, q), name=f"nanoact-worker-{i}")
             for i, wctx in enumerate(worker_contexts(ctx, workers, devices, os.cpu_count() or 1))]
    for p in procs:
        p.start()
    totals, errors = [0, 0], []
    try:
        while any(p.is_alive() for p in procs) or not q.empty():
            _relay(q, events, totals, errors)
            interrupt.check()
    except KeyboardInterrupt as e:
        interrupt.delivered()
        # Ctrl-C reaches the whole process group, so the workers got it too. A SIGTERM may have reached this
        # process only (`kill`, Slurm's `--signal=B:TERM`): pass it on (a worker ignores a second SIGTERM).
        # Either way each worker marks its cell interrupted and exits.
        if isinstance(e, Terminated):
            for p in procs:
                if p.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=30)
        raise
    for p in procs:
        p.join()
        if p.exitcode not in (0, None, 2):
            events(WorkerDied(p.name, p.exitcode))
    if errors:
        from nanoact.errors import NanoactError

        raise NanoactError(errors[0])
    return totals[0], totals[1]


def _relay(q, events: EventFn, totals: list[int], errors: list[str]) -> None:
    try:
        ev = q.get(timeout=0.5)
    except queue.Empty:
        return
    if isinstance(ev, WorkerFailed):
        errors.append(ev.error)
    elif isinstance(ev, WorkerEnded):
        totals[0] += ev.trained
        totals[1] += ev.failed
    else:
        events(ev)


def _worker_main(ctx: WorkerContext, q: Any) -> None:  # pragma: no cover - runs in a child process
    from nanoact.sweep.worker import Worker

    signal.signal(signal.SIGINT, signal.default_int_handler)

    def send(ev: Event) -> None:
        if not (isinstance(ev, CellTraining) and isinstance(ev.event, Iterated)):  # the parent shows cells and evals
            q.put(ev)

    from nanoact.errors import NanoactError

    try:
        with interruptible():
            trained, failed = Worker(ctx, send).run()
    except KeyboardInterrupt as e:
        sys.exit(exit_code(e))
    except NanoactError as e:  # e.g. the database stayed away: one line from the parent, not a child's traceback
        q.put(WorkerFailed(ctx.worker_name, str(e)))
        sys.exit(2)
    q.put(WorkerEnded(ctx.worker_name, trained, failed))
