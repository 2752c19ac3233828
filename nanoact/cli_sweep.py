"""The sweep commands (``sweep``, ``status``, ``experiments``): thin wrappers over ``nanoact.sweep``, with the
commands they print for the user to run next (each runs as printed)."""

from __future__ import annotations

import shlex
import sys

import click

from nanoact.cli_group import SET_HELP, remember_store, store_uri
from nanoact.errors import NanoactError


def _experiment_option(f):
    f = click.option("--file", "sweep_file", type=click.Path(dir_okay=False), default=None,
                     help="A sweep TOML file instead of a built-in experiment.")(f)
    return click.option("--experiment", "-e", default=None,
                        help="Built-in experiment name (see `nanoact experiments`).")(f)


def _storage_options(f):
    f = click.option("--storage", default=None, envvar="NANOACT_STORAGE",
                     help="Optuna storage: a journal file path (default mlruns/optuna-journal.log) or an RDB URL "
                          "such as postgresql+psycopg2://user@host/db.")(f)
    return click.option("--tracking-uri", default=None,
                        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db).")(f)


def _targets(ctx, param, values) -> dict[str, float]:
    """--until METRIC=HALF_WIDTH, repeatable: {metric: half-width} (a metric given twice is refused)."""
    out: dict[str, float] = {}
    for v in values:
        metric, eq, hw = v.partition("=")
        try:
            width = float(hw)
        except ValueError:
            width = None
        if not eq or width is None:
            raise click.BadParameter(f"{v!r}: expected METRIC=HALF_WIDTH, e.g. final_val_loss=0.005")
        if metric in out:
            raise click.BadParameter(f"{metric} is given twice")
        out[metric] = width
    return out


def _rule_options(f):
    f = click.option("--max-seeds", type=click.IntRange(min=3), default=None, metavar="N",
                     help="Seeds per activation the rule may reach (replaces [seeds] max).")(f)
    return click.option("--until", "until", multiple=True, metavar="METRIC=HALF_WIDTH", callback=_targets,
                        help="Seeds on demand: add seeds in rounds until every primary contrast of METRIC "
                             "(final_val_loss or pd_tv) has a 95% CI half-width at most HALF_WIDTH, or --max-seeds "
                             "is reached; repeatable; replaces the sweep file's [seeds] target (README: seeds on "
                             "demand).")(f)


def _load_spec(experiment, sweep_file, overrides=(), study=None, on_count=None, until=None, max_seeds=None):
    from nanoact.sweep import load_sweep

    if (experiment is None) == (sweep_file is None):
        raise click.UsageError("give exactly one of --experiment NAME or --file PATH")
    spec = load_sweep(experiment, sweep_file, overrides, on_count=on_count).with_study(study)
    return spec.with_seed_rule(until or None, max_seeds)


def _grid_size_check(large_grid: bool):
    """Says the number of cells first, before every cell is checked; above ``MAX_CELLS`` the user must insist
    (--large-grid, or yes at a prompt on a terminal)."""
    from nanoact.sweep.spec import MAX_CELLS

    def on_count(n: int, grid) -> None:
        axes = " x ".join(f"{len(v)} {k}" for k, v in grid.items())
        if n <= MAX_CELLS or large_grid:
            if n > MAX_CELLS:
                click.echo(f"{n:,} cells ({axes}); checking every cell's config ...")
            return
        what = f"the grid has {n:,} cells ({axes}), more than {MAX_CELLS:,}"
        if sys.stdin.isatty() and sys.stdout.isatty():
            if click.confirm(f"{what}. Go on?", default=False):
                return
            raise NanoactError(f"{what}; not run")
        raise NanoactError(f"{what}: check the grid (a typo in an axis?), or pass --large-grid to run it anyway")

    return on_count


@click.command("sweep", short_help="Run or resume an experiment's grid.")
@_experiment_option
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@_storage_options
@click.option("--study", default=None, help="Optuna study name (default: the experiment name).")
@_rule_options
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on this machine; CPU threads are split between them.")
@click.option("--devices", default=None, help="One device per worker, comma-separated, e.g. cuda:0,cuda:1.")
@click.option("--oversubscribe", is_flag=True,
              help="Allow more --workers than CPU cores (refused otherwise). Workers never outnumber the cells left.")
@click.option("--retry-failed", is_flag=True, help="Also rerun cells whose last attempt FAILED.")
@click.option("--dry-run", is_flag=True,
              help="Print the grid, what would run, and each cell's parameters, activation memory and estimated "
                   "time (CPU from finished runs in the store, GPU from a FLOP count); change nothing.")
@click.option("--large-grid", is_flag=True, help="Run a grid of more than 10,000 cells (refused otherwise).")
@click.option("--init", "init_only", is_flag=True,
              help="Only the coordinator step: create the study and parent run and enqueue missing cells.")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Import MODULE in every worker first (registers custom activations or models).")
@click.option("--train-log", type=click.Path(dir_okay=False), default=None,
              help="Append one line per cell a worker starts training to this file (an audit of what ran).")
@click.option("--system-metrics", is_flag=True, help="Also record CPU/memory/GPU use in each run (needs psutil).")
def sweep_command(experiment, sweep_file, overrides, storage, tracking_uri, study, until, max_seeds, workers, devices,
                  oversubscribe, retry_failed, dry_run, large_grid, init_only, plugins, train_log,
                  system_metrics) -> None:
    """Train every cell of an experiment's grid exactly once, tracking each in MLflow.

    Running the same command again trains only the missing cells, and the cells of workers that died (a worker
    that dies releases its cell's lease, so any later or concurrent sweep on the same storage takes the cell
    over; a run that had already finished is adopted, not retrained).

    With a seed rule (a [seeds] table, or --until), seeds are added in rounds: when a round's last cell is done,
    its interim analysis decides whether every targeted 95% half-width is met, and if not the next round's
    seeds are enqueued; one line per round says where the widths stand.
    """
    import importlib

    from nanoact import sweep
    from nanoact.progress import SweepProgress
    from nanoact.tracking_uri import display_url

    for mod in plugins:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise click.BadParameter(f"cannot import {mod!r}: {e}", param_hint="--plugin") from None
    remember_store(storage)
    spec = _load_spec(experiment, sweep_file, overrides, study, on_count=_grid_size_check(large_grid), until=until,
                      max_seeds=max_seeds)
    rule = (until, max_seeds)
    uri = store_uri(tracking_uri)
    opts = sweep.SweepOptions(storage_url=storage, tracking_uri=uri, workers=workers, retry_failed=retry_failed,
                              dry_run=dry_run, init_only=init_only,
                              devices=tuple(devices.split(",")) if devices else None, plugins=plugins,
                              train_log=train_log, system_metrics=system_metrics, oversubscribe=oversubscribe)
    where = (f"tracking {display_url(uri)}; storage "
             f"{display_url(storage) if storage else sweep.default_storage_path()}")
    if dry_run:
        file_spec = _load_spec(experiment, sweep_file, (), study, until=until, max_seeds=max_seeds) if overrides \
            else spec
        _print_dry_run(spec, file_spec, sweep.run(spec, opts), uri, where, storage)
        return
    click.echo(f"experiment {spec.name}: {where}")
    if spec.seed_rule is not None:
        click.echo(f"seeds on demand: {spec.seed_rule.describe()}")
    progress = SweepProgress()
    res = sweep.run(spec, opts, progress)
    if res.interrupted:
        how = "SIGTERM" if res.exit_code == 143 else "Ctrl-C"
        progress.line(f"interrupted ({how}): the current cell is marked KILLED and runs again; resume with: "
                      "nanoact sweep " + _spec_args(experiment, sweep_file, overrides, study, storage, rule)
                      + _tracking_arg(tracking_uri))
        sys.exit(res.exit_code)
    if init_only:
        click.echo(f"study {res.study_name} ready: {len(res.planned)} cell(s) enqueued; start workers with the same "
                   "command without --init")
        return
    _print_outcome(res)
    _print_next(res, spec, tracking_uri,
                f"{_spec_args(experiment, sweep_file, overrides, study, storage, rule)}{_tracking_arg(tracking_uri)}")
    sys.exit(res.exit_code)


def _print_next(res, spec, tracking_uri, resume_args: str) -> None:
    """What to run next: the report when the grid is done, else the command that resumes it."""
    from nanoact.sweep import CellStatus

    if res.complete:
        args = _mlflow_args(spec, tracking_uri)
        click.echo(f"next: nanoact report {args}    (statistics and plots)\n"
                   f"      nanoact ui {args}        (the runs in the MLflow UI)")
    elif res.count(CellStatus.INTERRUPTED, CellStatus.MISSING, CellStatus.FAILED):
        retry = " --retry-failed" if res.count(CellStatus.FAILED) else ""
        click.echo(f"resume with: nanoact sweep {resume_args}{retry}")
    elif res.rounds_left:
        click.echo("the seed rule's next round is being decided or enqueued by another process; `nanoact status` "
                   "(with the same --experiment/--file, --set, --study, --until, --max-seeds and --storage) shows it")


DRY_RUN_LISTED = 1000  # cells a dry run lists one by one


def _print_dry_run(spec, file_spec, res, uri: str, where: str, storage: str | None) -> None:
    """The grid, what would run (the first ``DRY_RUN_LISTED`` cells one by one), the resolved base config and its
    ``--set`` diff from the sweep file (``file_spec``), whether the study exists and would accept this config, and
    each cell's size and time. A study made from another config: every cell ``refused``, exit 2, as the sweep."""
    from nanoact import sweep
    from nanoact.planning import config_lines, describe, study_lines
    from nanoact.sweep import CellStatus
    from nanoact.tracking_uri import display_url

    click.echo(f"experiment {spec.name} (study {spec.study_name}): {len(res.states)} cells; axes: "
               + ", ".join(f"{k} = {v}" for k, v in spec.grid.items()))
    if spec.seed_rule is not None:
        click.echo(f"seeds on demand: {spec.seed_rule.describe()}; the cells below are round 1's")
    refused = not res.study_check.matches
    planned = set() if refused else set(res.planned)
    for s in res.states[:DRY_RUN_LISTED]:
        action = "would run" if s.cell.key in planned else "refused" if refused else str(s.state)
        click.echo(f"  {s.cell.key:60s} {action}")
    if len(res.states) > DRY_RUN_LISTED:
        click.echo(f"  ... and {len(res.states) - DRY_RUN_LISTED:,} more cells (`nanoact status` lists all)")
    runs = "no cell would run (the study would be refused, below)" if refused else f"{len(planned)} cell(s) would run"
    click.echo(f"{runs}; {where}")
    store = display_url(storage) if storage else str(sweep.default_storage_path())
    for line in [*config_lines(spec, file_spec), *study_lines(spec, res.study_check, res.count(CellStatus.DONE), store),
                 *describe(spec, uri, planned)]:
        click.echo(line)
    if refused:
        raise NanoactError(f"study {spec.study_name!r} was created from a different config or grid (above); rerun "
                           "with the same sweep file and --set options, or start a new study with --study NAME")


def _print_outcome(res) -> None:
    from nanoact.sweep import CellStatus

    counts: dict[str, int] = {}
    for s in res.states:
        counts[str(s.state)] = counts.get(str(s.state), 0) + 1
    click.echo(f"sweep {res.study_name}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
               + f" of {len(res.states)} cells ({res.trained} trained by this call); parent run {res.parent_run_id}")
    failed = [s for s in res.states if s.state == CellStatus.FAILED]
    for s in failed:
        click.echo(f"  failed {s.cell.key}: {s.error}")
    if failed:
        click.echo("rerun with --retry-failed to try the failed cells again:")
    elif res.count(CellStatus.INTERRUPTED, CellStatus.MISSING):
        click.echo("some cells were interrupted; run the same command again to train them:")
    elif res.count(CellStatus.RUNNING, CellStatus.WAITING):
        # this worker found the queue empty; the rest is taken by other workers (a shared storage)
        click.echo(f"{res.count(CellStatus.RUNNING, CellStatus.WAITING)} cell(s) still running or queued in "
                   "other workers; `nanoact status` (with the same --experiment/--file, --set, --study and "
                   "--storage) shows progress")


@click.command("status", short_help="Show the state of every cell of an experiment.")
@_experiment_option
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--study", default=None, help="Optuna study name (default: the experiment name).")
@_rule_options
@click.option("--storage", default=None, envvar="NANOACT_STORAGE", help="Optuna storage (as for sweep).")
def status_command(experiment, sweep_file, overrides, study, until, max_seeds, storage) -> None:
    """A table of cells with their state, MLflow run id, final val loss and wall time; with a seed rule, the
    cells of the current round and each round recorded so far (seeds, widest half-widths against their targets,
    decision, projected seeds)."""
    from nanoact import sweep
    from nanoact.sweep.storage import storage_location

    spec = _load_spec(experiment, sweep_file, overrides, study, until=until, max_seeds=max_seeds)
    read = storage_location(storage)
    states = sweep.status(spec, storage_url=storage)  # creates nothing
    click.echo(f"study {spec.study_name} in Optuna storage {read.display()}")
    resume = f"nanoact sweep {_spec_args(experiment, sweep_file, overrides, study, storage, (until, max_seeds))}"
    if all(s.state == sweep.CellStatus.MISSING for s in states):
        where = "" if read.exists() else ": that storage does not exist"
        click.echo(f"nothing has run yet for study {spec.study_name} ({len(states)} cells){where}. If it ran "
                   f"elsewhere, run this from that folder or pass its --storage; else start it with:\n  {resume}")
        return
    click.echo(f"{'cell':52s} {'state':11s} {'trial':>5s} {'run id':32s} {'val loss':>8s} {'wall s':>7s}")
    for s in states:
        vl = f"{s.final_val_loss:.4f}" if s.final_val_loss is not None else "-"
        wt = f"{s.wall_s:.1f}" if s.wall_s is not None else "-"
        tn = str(s.trial_number) if s.trial_number is not None else "-"
        click.echo(f"{s.cell.key:52s} {str(s.state):11s} {tn:>5s} {s.run_id or '-':32s} {vl:>8s} {wt:>7s}")
    done = sum(s.state == sweep.CellStatus.DONE for s in states)
    click.echo(f"{done}/{len(states)} cells done")
    _print_rounds(spec, storage)
    holder = sweep.coordinator_holder(spec, storage)
    if holder:
        click.echo(f"the coordinator lease (study set-up, enqueueing) is held by {holder}")
    queued = sum(s.state == sweep.CellStatus.WAITING for s in states)
    if queued and not any(s.state == sweep.CellStatus.RUNNING for s in states):
        click.echo(f"{queued} cell(s) queued and none running: no worker is taking them")
    if done < len(states):
        failed = any(s.state == sweep.CellStatus.FAILED for s in states)
        click.echo(f"resume with: {resume}" + (" --retry-failed" if failed else ""))


def _print_rounds(spec, storage) -> None:
    """A seed rule's recorded rounds, one line each as the sweep printed them, and the seeds projected to meet
    each target (``sequential.project``, from the newest round's widest half-widths)."""
    from nanoact import sweep
    from nanoact.progress import round_line

    if spec.seed_rule is None:
        if sweep.rounds_recorded(spec, storage, ruled=False):
            click.echo("this study grows its seeds by a rule: pass the sweep's --until/--max-seeds to see its rounds")
        return
    recorded = sweep.rounds_recorded(spec, storage)
    click.echo(f"seeds on demand: {spec.seed_rule.describe()}")
    if not recorded:
        click.echo(f"round 1 ({spec.seed_rule.start} seeds per activation) not decided yet")
        return
    for ev, _ in recorded:
        click.echo(round_line(ev))
    ev, projected = recorded[-1]
    if not ev.stop:
        click.echo(f"round {ev.round + 1} ({ev.next_seeds} seeds per activation) running")
    click.echo("projected seeds per activation to meet each target: "
               + ", ".join(f"{k} {n}" + (" (the maximum)" if n >= spec.seed_rule.max else "")
                           for k, n in projected.items()))


def _spec_args(experiment, sweep_file, overrides=(), study=None, storage=None, rule=((), None)) -> str:
    """The options that select a study, as typed again: --experiment/--file, every --set, --study, --storage
    (a password in a storage URL is masked: keep it in ~/.pgpass, docs/DISTRIBUTED.md)."""
    from nanoact.tracking_uri import display_url

    args = ["--experiment", experiment] if experiment else ["--file", sweep_file]
    for o in overrides:
        args += ["--set", o]
    args += ["--study", study] if study else []
    until, max_seeds = rule
    for metric, hw in (until or {}).items():
        args += ["--until", f"{metric}={hw}"]
    args += ["--max-seeds", str(max_seeds)] if max_seeds is not None else []
    args += ["--storage", display_url(storage)] if storage else []
    return shlex.join(args)


def _tracking_arg(tracking_uri) -> str:
    from nanoact.tracking_uri import display_url

    return f" --tracking-uri {shlex.quote(display_url(tracking_uri))}" if tracking_uri else ""


def _mlflow_args(spec, tracking_uri) -> str:
    """--experiment (the MLflow experiment), --study when it is not the default, and the user's --tracking-uri:
    what `report` and `ui` need to find a sweep's runs."""
    args = ["--experiment", spec.name] + (["--study", spec.study_name] if spec.study_name != spec.name else [])
    return shlex.join(args) + _tracking_arg(tracking_uri)


@click.command("experiments", short_help="List the experiments: built-in, and yours in ./sweeps/.")
def experiments_command() -> None:
    """List sweep files with their grid sizes and where each comes from (./sweeps/NAME.toml wins over a built-in
    of the same name); a file that does not load is listed with its error."""
    from nanoact.sweep import experiments, is_builtin, load_sweep

    broken = 0
    for name, path in experiments().items():
        where = "built-in" if is_builtin(path) else _shown_path(path)
        try:
            spec = load_sweep(path=path, check_names=False)  # listing needs no model or activation (no PyTorch)
        except NanoactError as e:
            broken += 1
            click.echo(f"{name:10s} BROKEN [{where}]: {' '.join(str(e).split())}")
            continue
        axes = " x ".join(f"{len(v)} {k}" for k, v in spec.grid.items())
        click.echo(f"{name:10s} {len(spec.cells()):4d} cells ({axes}) [{where}]: {spec.description}")
    if broken:
        click.echo(f"{broken} sweep file{'s' if broken > 1 else ''} did not load (BROKEN above); fix "
                   f"{'them' if broken > 1 else 'it'} before running", err=True)


def _shown_path(path) -> str:
    """A user's sweep file as ./relative/path when under the working directory, else its absolute path."""
    from pathlib import Path

    p = Path(path).resolve()
    try:
        return f"./{p.relative_to(Path.cwd().resolve())}"
    except ValueError:
        return str(p)
