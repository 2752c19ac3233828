"""The Python API behind ``nanoact sweep`` and ``nanoact status``."""

from __future__ import annotations

from dataclasses import replace

from nanoact.events import Notice, Planned
from nanoact.sweep import state as S
from nanoact.sweep.coordinator import finish, load_study, prepare
from nanoact.sweep.interrupt import exit_code, interruptible
from nanoact.sweep.options import EventFn, SweepOptions
from nanoact.sweep.spec import SweepSpec, load_sweep


def run(spec: SweepSpec | str, options: SweepOptions | None = None, events: EventFn | None = None
        ) -> S.SweepResult:
    """Run (or resume) a sweep: every cell of ``spec``'s grid trained exactly once, each in its own MLflow run.

    ``spec`` is a ``SweepSpec`` or a built-in experiment's name; neither it nor ``options`` is changed.
    ``events`` receives progress as ``nanoact.events`` dataclasses (``Planned``, ``CellStarted``, ``CellTraining``,
    ``CellDone``, ``CellFailed``, ``Recovered``, ``Idle``, ...); nothing is printed. A Ctrl-C or a SIGTERM (``kill``,
    Slurm) ends the call with ``result.interrupted`` set (the cell that was training is marked interrupted and runs
    again); ``result.exit_code`` is then 130 or 143. Called off the main thread, SIGTERM keeps its handler.
    """
    with interruptible():
        return _run(spec, options, events)


def _run(spec: SweepSpec | str, options: SweepOptions | None, events: EventFn | None) -> S.SweepResult:
    if isinstance(spec, str):
        spec = load_sweep(spec)
    opts = options or SweepOptions()
    emit = events or (lambda ev: None)
    if opts.devices and not opts.dry_run:
        _check_devices_here(opts.devices)
    result, ctx = prepare(spec, opts, emit)
    if ctx is None or opts.init_only:
        return result
    emit(Planned(total=len(result.states), done=result.count(S.CellStatus.DONE),
                 todo=result.count(S.CellStatus.WAITING), running=result.count(S.CellStatus.RUNNING),
                 recovered=tuple(result.recovered)))
    workers = min(opts.workers, max(result.count(S.CellStatus.WAITING), 1))  # no worker without a cell to take
    if result.rounds_left:  # a seed rule's next rounds bring cells for every worker
        workers = opts.workers
    if workers < opts.workers:
        emit(Notice(f"starting {workers} worker(s), not {opts.workers}: only "
                    f"{result.count(S.CellStatus.WAITING)} cell(s) to run"))
    devices = opts.devices[:workers] if opts.devices else None
    try:
        if workers == 1:
            from nanoact.sweep.worker import Worker

            # one worker in this process: its threads stay as configured (train.threads, 0 = torch's default)
            wctx = replace(ctx, device=devices[0] if devices else None)
            result.trained, result.failed = Worker(wctx, emit).run()
        else:
            from nanoact.sweep.pool import run_pool

            result.trained, result.failed = run_pool(ctx, workers, devices, emit)
    except KeyboardInterrupt as e:
        result.interrupted, result.interrupt_exit = True, exit_code(e)
    return finish(spec, ctx, result)


def _check_devices_here(devices: tuple[str, ...]) -> None:
    """Each --devices entry exists on this machine, before any cell is taken: a worker (a Slurm task on a node
    without its GPU, say) would otherwise fail every cell it pops."""
    from nanoact.errors import ConfigError
    from nanoact.trainer import resolve_device

    for d in devices:
        try:
            resolve_device(d)
        except ConfigError as e:
            reason = str(e).split(";")[0].split(" but ", 1)[-1]  # "CUDA is not available", "only 1 CUDA device..."
            raise ConfigError(f"--devices {d}: {reason} on this machine") from None


def status(spec: SweepSpec, storage_url: str | None = None) -> list[S.CellState]:
    """Cell states (of a seed rule's current round) without changing anything (no study or file is created)."""
    from nanoact.sweep import rounds

    study = load_study(spec, storage_url)
    if study is None:
        return S.cell_states(spec, None)
    return S.cell_states(rounds.current(spec, study), study.get_trials(deepcopy=False))


def rounds_recorded(spec: SweepSpec, storage_url: str | None = None, ruled: bool = True) -> list:
    """A seed rule's recorded rounds, oldest first, as ``(RoundDecided, projected seeds per metric)``; with
    ``ruled=False`` (a spec without the rule) the bare records. Nothing is created."""
    from nanoact.sweep import rounds

    study = load_study(spec, storage_url)
    done = rounds.recorded_rounds(study) if study is not None else {}
    if not ruled:
        return [done[k] for k in sorted(done)]
    from nanoact.analysis.sequential import project

    return [(rounds.decided(spec, k, done[k]), project(spec.seed_rule, done[k]["seeds"], done[k]["widest"]))
            for k in sorted(done)]


def coordinator_holder(spec: SweepSpec, storage_url: str | None = None) -> str | None:
    """Who holds the study's coordinator lease right now, or None when it is free (nothing is created)."""
    from nanoact.sweep.leases import open_leases
    from nanoact.sweep.recovery import COORDINATOR
    from nanoact.sweep.storage import storage_exists

    if not storage_exists(storage_url):
        return None
    leases = open_leases(storage_url, spec.study_name)
    try:
        return leases.holder(COORDINATOR)
    finally:
        leases.close()
