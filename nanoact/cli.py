"""The ``nanoact`` command line: thin wrappers over the library. Only this module talks to the terminal."""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys

import click

from nanoact.cli_group import NanoactGroup, remember_store
from nanoact.errors import NanoactError

SET_HELP = "Override a config key, e.g. --set train.max_iters=200 (repeatable)."


@click.group(cls=NanoactGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nanoact")
@click.option("-v", "--verbose", is_flag=True, help="Show library log messages.")
def cli(verbose: bool) -> None:
    """nanoact: activation-function ablations on small character-level language models.

    Typical use: `nanoact sweep --experiment smoke`, then `nanoact report --experiment smoke`.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not verbose:  # MLflow and alembic announce schema migrations at INFO
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # MLflow logs a DB error with its traceback before re-raising it; NanoactGroup words it in one line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _tracking_uri(tracking_uri: str | None) -> str:
    """Resolve the tracking URI; credentials in an http(s) URI move to MLflow's env vars (never into MLflow's
    own messages, run links or tags)."""
    from nanoact.tracking_uri import move_credentials_to_env
    from nanoact.tracking_uri import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    remember_store(uri)
    return move_credentials_to_env(uri)


def _config(model: str | None, activation: str | None, seed: int | None, overrides: tuple[str, ...]):
    from nanoact.config import RunConfig, apply_overrides

    items = list(overrides)
    if model is not None:
        items.insert(0, f"model.name={model}")
    if activation is not None:
        items.insert(0, f"model.activation={activation}")
    if seed is not None:
        items.insert(0, f"train.seed={seed}")
    return apply_overrides(RunConfig(), items)


@cli.command("train", short_help="Train one model with one activation and seed.")
@click.option("--model", default=None, help="Model name (default: minigpt). See `nanoact models`.")
@click.option("--activation", default=None, help="Activation spec, e.g. gelu, smelu(beta=0.5), or one per layer.")
@click.option("--seed", type=int, default=None, help="Training seed (init, batches, dropout).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--tracking-uri", default=None,
              help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db).")
@click.option("--experiment", "experiment_name", default="train", show_default=True, help="MLflow experiment name.")
@click.option("--no-track", is_flag=True, help="Log nothing: no MLflow run, no files.")
@click.option("--system-metrics", is_flag=True, help="Also record CPU/memory/GPU use in the run (needs psutil).")
def train_command(model, activation, seed, overrides, tracking_uri, experiment_name, no_track, system_metrics) -> None:
    """Train one cell with the shared trainer and print its final metrics.

    Defaults are nanoGPT's CPU recipe for shakespeare_char on minigpt; change anything with --set. The run is
    tracked in MLflow (the same store as sweeps, experiment `train`) unless --no-track is given.
    """
    from nanoact.data import CharDataset
    from nanoact.models import validate_model_config
    from nanoact.progress import Progress
    from nanoact.trainer import train

    if no_track and (tracking_uri or system_metrics):
        raise click.UsageError("--no-track logs nothing: drop --tracking-uri / --system-metrics, or --no-track")
    cfg = _config(model, activation, seed, overrides)
    validate_model_config(cfg.model, 65)  # fail fast on bad names before loading data
    # the corpus before the run: a data error found before training leaves no FAILED run behind
    data = CharDataset.from_config(cfg.data.corpus, cfg.data.cache_dir, cfg.data.train_fraction)
    tracker = None if no_track else _train_tracker(tracking_uri, experiment_name, system_metrics)
    m, t = cfg.model, cfg.train
    click.echo(f"training {m.name} with {m.activation}, seed {t.seed}, {t.max_iters} iters")
    res = train(cfg, data=data, tracker=tracker, progress=Progress())
    mt = res.metrics
    click.echo(f"parameters: {res.n_params:,} | device: {res.device} ({res.dtype}) | activation modules: "
               f"{', '.join(sorted(set(res.activation_modules)))}")
    best = "" if mt["best/val_loss"] == mt["final/val_loss"] else f", best val loss {mt['best/val_loss']:.4f}"
    click.echo(f"final: train loss {mt['final/train_loss']:.4f}, val loss {mt['final/val_loss']:.4f}, "
               f"val acc {mt['final/val_acc']:.4f}{best}")
    ms = 1000 * mt["time/train_s"] / max(t.max_iters, 1)
    click.echo(f"speed: {mt['tokens_per_s_mean']:,.0f} tokens/s, {ms:.1f} ms/iter (evals excluded); "
               f"wall time {mt['time/wall_s']:.1f} s")
    if tracker is not None:
        click.echo(f"mlflow run {tracker.run_id} in experiment {experiment_name}; browse it with "
                   f"`nanoact ui --experiment {experiment_name}`")


def _train_tracker(tracking_uri, experiment_name: str, system_metrics: bool):
    from nanoact import tracking
    from nanoact.server import check_tracking_server
    from nanoact.tracking_uri import display_url

    uri = _tracking_uri(tracking_uri)
    check_tracking_server(uri)
    tracking.open_store(uri)
    exp = tracking.ensure_experiment(uri, experiment_name)
    click.echo(f"tracking to {display_url(uri)} (experiment {experiment_name}; --no-track to log nothing)")
    return tracking.MlflowTracker(uri, exp, source="nanoact train", system_metrics=system_metrics)


@cli.command("params", short_help="Print a model's parameter count.")
@click.option("--model", default=None, help="Model name (default: minigpt).")
@click.option("--activation", default=None, help="Activation spec.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--vocab-size", type=int, default=65, show_default=True, help="Vocabulary size.")
def params_command(model, activation, overrides, vocab_size) -> None:
    """Build the model from the config and print its parameter count and activation modules."""
    from nanoact import activations
    from nanoact.models import build_model

    cfg = _config(model, activation, None, overrides)
    net = build_model(cfg.model, vocab_size)
    n = net.num_params()
    click.echo(f"{cfg.model.name} ({cfg.model.n_layer} layers, n_embd {cfg.model.n_embd}, "
               f"{cfg.model.n_head} heads, block {cfg.model.block_size}, activation {cfg.model.activation}): "
               f"{n:,} parameters ({n / 1e6:.2f}M)")
    click.echo("activation modules: " + ", ".join(sorted(set(activations.activation_modules(net)))))


@cli.command("models", short_help="List the registered models.")
def models_command() -> None:
    """List model names and where each routes the activation."""
    from nanoact.models import get_model_class, model_names

    for name in model_names():
        click.echo(f"{name:16s} {_first_sentence(get_model_class(name).__doc__)}")


def _first_sentence(doc: str | None) -> str:
    """A docstring's first sentence, whole (it may span lines), without reST markup (``code`` -> code)."""
    import re

    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    para = re.sub(r"``([^`]*)``", r"\1", para).replace("`", "")
    m = re.search(r"^.*?[.!?](?=\s|$)", para)
    return m.group(0) if m else para


@cli.command("activations", short_help="List the registered activations.")
def activations_command() -> None:
    """List activation names with their parameters and defaults."""
    from nanoact import activations

    for name in activations.activation_names():
        spec = activations.get_spec(name)
        params = ", ".join(f"{k}={v}" for k, v in spec.params.items())
        doc = _first_sentence(spec.doc)
        click.echo(f"{name + (f'({params})' if params else ''):50s} {doc}")


# ----------------------------------------------------------------------------------------------------------
# sweeps

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


def _load_spec(experiment, sweep_file, overrides=(), study=None, on_count=None):
    from nanoact.sweep import load_sweep

    if (experiment is None) == (sweep_file is None):
        raise click.UsageError("give exactly one of --experiment NAME or --file PATH")
    return load_sweep(experiment, sweep_file, overrides, on_count=on_count).with_study(study)


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


@cli.command("sweep", short_help="Run or resume an experiment's grid.")
@_experiment_option
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@_storage_options
@click.option("--study", default=None, help="Optuna study name (default: the experiment name).")
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
def sweep_command(experiment, sweep_file, overrides, storage, tracking_uri, study, workers, devices, oversubscribe,
                  retry_failed, dry_run, large_grid, init_only, plugins, train_log, system_metrics) -> None:
    """Train every cell of an experiment's grid exactly once, tracking each in MLflow.

    Running the same command again trains only the missing cells, and the cells of workers that died (a worker
    that dies releases its cell's lease, so any later or concurrent sweep on the same storage takes the cell
    over; a run that had already finished is adopted, not retrained).
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
    spec = _load_spec(experiment, sweep_file, overrides, study, on_count=_grid_size_check(large_grid))
    uri = _tracking_uri(tracking_uri)
    opts = sweep.SweepOptions(storage=storage, tracking_uri=uri, workers=workers, retry_failed=retry_failed,
                              dry_run=dry_run, init_only=init_only,
                              devices=tuple(devices.split(",")) if devices else None, plugins=plugins,
                              train_log=train_log, system_metrics=system_metrics, oversubscribe=oversubscribe)
    where = (f"tracking {display_url(uri)}; storage "
             f"{display_url(storage) if storage else sweep.default_storage_path()}")
    if dry_run:
        res = sweep.run(spec, opts)
        click.echo(f"experiment {spec.name} (study {spec.study_name}): {len(res.states)} cells; axes: "
                   + ", ".join(f"{k} = {v}" for k, v in spec.grid.items()))
        planned = set(res.planned)
        for s in res.states[:DRY_RUN_LISTED]:
            action = "would run" if s.cell.key in planned else str(s.state)
            click.echo(f"  {s.cell.key:60s} {action}")
        if len(res.states) > DRY_RUN_LISTED:
            click.echo(f"  ... and {len(res.states) - DRY_RUN_LISTED:,} more cells (`nanoact status` lists all)")
        click.echo(f"{len(res.planned)} cell(s) would run; {where}")
        from nanoact.planning import describe

        for line in describe(spec, uri):
            click.echo(line)
        return
    click.echo(f"experiment {spec.name}: {where}")
    progress = SweepProgress()
    res = sweep.run(spec, opts, progress)
    if res.interrupted:
        how = "SIGTERM" if res.exit_code == 143 else "Ctrl-C"
        progress.line(f"interrupted ({how}): the current cell is marked KILLED and runs again; resume with: "
                      "nanoact sweep " + _spec_args(experiment, sweep_file, overrides, study, storage)
                      + _tracking_arg(tracking_uri))
        sys.exit(res.exit_code)
    if init_only:
        click.echo(f"study {res.study} ready: {len(res.planned)} cell(s) enqueued; start workers with the same "
                   "command without --init")
        return
    from nanoact.sweep import CellStatus

    _print_outcome(res)
    if res.complete:
        args = _mlflow_args(spec, tracking_uri)
        click.echo(f"next: nanoact report {args}    (statistics and plots)\n"
                   f"      nanoact ui {args}        (the runs in the MLflow UI)")
    elif res.count(CellStatus.INTERRUPTED, CellStatus.MISSING, CellStatus.FAILED):
        retry = " --retry-failed" if res.count(CellStatus.FAILED) else ""
        click.echo(f"resume with: nanoact sweep {_spec_args(experiment, sweep_file, overrides, study, storage)}"
                   f"{_tracking_arg(tracking_uri)}{retry}")
    sys.exit(res.exit_code)


DRY_RUN_LISTED = 1000  # cells a dry run lists one by one


def _print_outcome(res) -> None:
    from nanoact.sweep import CellStatus

    counts: dict[str, int] = {}
    for s in res.states:
        counts[str(s.state)] = counts.get(str(s.state), 0) + 1
    click.echo(f"sweep {res.study}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
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


@cli.command("status", short_help="Show the state of every cell of an experiment.")
@_experiment_option
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--study", default=None, help="Optuna study name (default: the experiment name).")
@click.option("--storage", default=None, envvar="NANOACT_STORAGE", help="Optuna storage (as for sweep).")
def status_command(experiment, sweep_file, overrides, study, storage) -> None:
    """A table of cells with their state, MLflow run id, final val loss and wall time."""
    from nanoact import sweep
    from nanoact.sweep.storage import journal_path, is_rdb_url
    from nanoact.tracking_uri import display_url

    spec = _load_spec(experiment, sweep_file, overrides, study)
    read = display_url(storage) if is_rdb_url(storage) else str(journal_path(storage))
    states = sweep.status(spec, storage=storage)  # creates nothing
    click.echo(f"study {spec.study_name} in Optuna storage {read}")
    resume = f"nanoact sweep {_spec_args(experiment, sweep_file, overrides, study, storage)}"
    if all(s.state == sweep.CellStatus.MISSING for s in states):
        where = "" if is_rdb_url(storage) or journal_path(storage).exists() else ": that storage does not exist"
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
    holder = sweep.coordinator_holder(spec, storage)
    if holder:
        click.echo(f"the coordinator lease (study set-up, enqueueing) is held by {holder}")
    queued = sum(s.state == sweep.CellStatus.WAITING for s in states)
    if queued and not any(s.state == sweep.CellStatus.RUNNING for s in states):
        click.echo(f"{queued} cell(s) queued and none running: no worker is taking them")
    if done < len(states):
        failed = any(s.state == sweep.CellStatus.FAILED for s in states)
        click.echo(f"resume with: {resume}" + (" --retry-failed" if failed else ""))


def _spec_args(experiment, sweep_file, overrides=(), study=None, storage=None) -> str:
    """The options that select a study, as typed again: --experiment/--file, every --set, --study, --storage
    (a password in a storage URL is masked: keep it in ~/.pgpass, docs/DISTRIBUTED.md)."""
    from nanoact.tracking_uri import display_url

    args = ["--experiment", experiment] if experiment else ["--file", sweep_file]
    for o in overrides:
        args += ["--set", o]
    args += ["--study", study] if study else []
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


@cli.command("experiments", short_help="List the experiments: built-in, and yours in ./sweeps/.")
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


@cli.command("ui", short_help="Open the MLflow UI on the same store.")
@click.option("--tracking-uri", default=None, help="MLflow store (default as for sweep).")
@click.option("--experiment", "-e", default=None,
              help="Print the direct URL of this experiment's runs table (one study's finished cells, activations "
                   "as groups).")
@click.option("--study", default=None, help="The study the linked view shows (default: the newest).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback by default).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port.")
@click.option("--server-log", is_flag=True, help="Show the MLflow server's own output (start-up, one line per "
                                                  "request).")
def ui_command(tracking_uri, experiment, study, host, port, server_log) -> None:
    """Start the MLflow UI on the store nanoact writes to (one server process, bound to 127.0.0.1 unless told
    otherwise) and print where to look. It reads a store, never creates one. Stop it with Ctrl-C."""
    from nanoact import server, tracking
    from nanoact.tracking_uri import display_url, resolve_tracking_uri

    if study is not None and experiment is None:
        raise click.UsageError("--study needs --experiment (the experiment that holds the study)")
    server.check_port_free(host, port)
    uri = resolve_tracking_uri(tracking_uri)
    remember_store(uri)
    tracking.require_store(uri)
    tracking.open_store(uri)  # an old sqlite store's schema is migrated once, even when a sweep starts meanwhile
    base = f"http://{host}:{port}"
    target, shown = (tracking.runs_table_path(uri, experiment, study) if experiment
                     else ("/#/?workflowType=machine_learning", None))
    click.echo(f"starting the MLflow UI for {display_url(uri)} ...")
    with server.stop_on_hangup():  # kill or a closed terminal stops the UI's process group too, as Ctrl-C does
        ui = server.ui_process(uri, host, port,
                               on_line=(lambda line: click.echo(line, err=True)) if server_log else None)
        try:
            ui.wait_healthy()
            what = f" (study {shown}: its finished cells, grouped by activation)" if shown else ""
            click.echo(f"MLflow UI ready: {base + target}{what}  (Ctrl-C to stop)")
            code = ui.proc.wait()
        except KeyboardInterrupt:
            ui.stop()
            code = 0
    sys.exit(code)


@cli.command("report", short_help="Analyse an experiment's runs and write a report.")
@click.option("--experiment", "-e", "experiments", multiple=True, required=True,
              help="Experiment (MLflow experiment name); repeat to compare several.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder (default reports/<experiment>/).")
@click.option("--tracking-uri", default=None, help="MLflow store (default as for sweep).")
@click.option("--allow-anomalies", is_flag=True, help="Exit 0 even when a guard fires.")
@click.option("--allow-mixed-dtypes", is_flag=True,
              help="Analyse runs computed in different dtypes (float32, bfloat16) together; else that is an error.")
@click.option("--no-log", is_flag=True, help="Do not log the report to the sweep's parent run.")
@click.option("--study", default=None, help="Analyse only this study's runs (when an experiment holds several).")
@click.option("--where", "where", multiple=True, metavar="PARAM=VALUE",
              help="Keep runs whose param matches, e.g. --where model.name=minigpt (one slice of the zoo).")
@click.option("--pd-margin", type=float, default=0.10, show_default=True,
              help="Difference of interest for reproducibility, relative to seed-to-seed pd_tv: equivalence "
                   "tests and seeds-needed figures use it. State it before looking at the results.")
@click.option("--loss-margin", type=float, default=0.01, show_default=True,
              help="Difference of interest for final val loss, in nats per character (equivalence tests, "
                   "seeds needed).")
@click.option("--storage", default=None, envvar="NANOACT_STORAGE",
              help="The sweep's Optuna storage (as for sweep), read for the state of cells without a FINISHED run "
                   "(queued, running, ...); default: optuna-journal.log beside the sqlite store or in ./mlruns.")
def report_command(experiments, out, tracking_uri, allow_anomalies, allow_mixed_dtypes, no_log, study, where,
                   pd_margin, loss_margin, storage) -> None:
    """PD on the shared evaluation set, blocked (RCBD) statistics, guards and plots, as report.md,
    summary.json and PNGs."""
    from nanoact.analysis.equivalence import Margins
    from nanoact.analysis.report import run_report
    from nanoact.progress import Progress

    for name, v in (("--pd-margin", pd_margin), ("--loss-margin", loss_margin)):
        if not (math.isfinite(v) and v > 0):
            raise click.BadParameter(f"{v}: must be a positive number", param_hint=name)
    filters = {}
    for w in where:
        k, eq, v = w.partition("=")
        if not eq or not k.strip():
            raise click.BadParameter(f"{w!r}: expected PARAM=VALUE", param_hint="--where")
        filters[k.strip()] = v.strip()
    remember_store(storage)
    from nanoact.tracking_uri import display_url

    progress = Progress()
    uri = _tracking_uri(tracking_uri)
    click.echo(f"reading MLflow store {display_url(uri)}")
    res = run_report(list(experiments), tracking_uri=uri, out_dir=out,
                     allow_anomalies=allow_anomalies, log_to_parent=not no_log, progress=progress.line,
                     study=study, where=filters or None, margins=Margins(pd_rel=pd_margin, loss=loss_margin),
                     storage=storage, allow_mixed_dtypes=allow_mixed_dtypes)
    click.echo(res.headline)
    click.echo(f"wrote {res.report_md}, {res.report_md.with_suffix('.html')}, {res.summary_json}")
    if res.anomalies:
        for a in res.anomalies:
            click.echo(f"ANOMALY: {a}", err=True)
        if not allow_anomalies:
            click.echo("guards fired (see the top of report.md); rerun with --allow-anomalies to exit 0",
                       err=True)
            sys.exit(3)


@cli.command("server", short_help="Start an MLflow tracking server for distributed sweeps.")
@click.option("--backend-store-uri", envvar="MLFLOW_BACKEND_STORE_URI", default=None,
              help="Where runs are stored: postgresql+psycopg2://USER@HOST:PORT/DB for many workers (keep the "
                   "password in ~/.pgpass, or pass the URL in $MLFLOW_BACKEND_STORE_URI), else "
                   "sqlite:///<cwd>/mlruns/mlflow.db.")
@click.option("--artifacts-destination", default=None,
              help="Where the server stores artifacts it serves (folder or URI; default <cwd>/mlruns/artifacts).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address. Loopback by default; for other machines prefer an SSH tunnel or a reverse proxy.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="TCP port.")
@click.option("--allowed-hosts", default=None,
              help="Host headers the server accepts (passed to mlflow), e.g. mlflow.lab.example,10.0.0.5:5000. "
                   "Set it whenever --host is not loopback.")
@click.option("--workers", "server_workers", type=click.IntRange(min=1), default=None,
              help="Server worker processes (mlflow's default 4); each keeps its own database connection pool.")
def server_command(backend_store_uri, artifacts_destination, host, port, allowed_hosts, server_workers) -> None:
    """Run `mlflow server` with a served artifact store, and wait until it answers /health.

    Workers on any machine then log with `nanoact sweep --tracking-uri http://HOST:PORT`. The database URL is
    handed to mlflow through its environment (never a command line others can see with `ps`), and passwords are
    masked in everything printed. Stop with Ctrl-C.
    """
    from nanoact import server
    from nanoact.tracking_uri import display_url

    server.check_port_free(host, port)  # else another server's /health answer would read as "ready"
    spec = server.server_spec(backend_store_uri, artifacts_destination, host, port, allowed_hosts, server_workers)
    remember_store(spec.backend_store_uri)
    server.check_database(spec.backend_store_uri)
    if not server.is_loopback(host):
        click.echo(f"warning: listening on {host}, beyond loopback. MLflow has no authentication by default: anyone "
                   f"who reaches port {port} can read and change runs." + ("" if allowed_hosts else
                   " Set --allowed-hosts to the names clients use."), err=True)
    click.echo(f"mlflow server: backend {display_url(spec.backend_store_uri)}, artifacts "
               f"{display_url(spec.artifacts_destination)}, on {host}:{port}")

    code = server.serve(spec, on_line=lambda line: click.echo(line, err=True),
                        on_ready=lambda url: click.echo(f"ready: start workers with --tracking-uri {url} "
                                                        "(Ctrl-C to stop)"))
    if code is not None:
        raise NanoactError(f"mlflow server exited with code {code}")
    click.echo("mlflow server stopped")


def main() -> None:
    """The ``nanoact`` entry point. Errors are click's to show (``UserError``: one ``error:`` line, exit 2); this
    only gives an interruption the shell's exit code, 130 for Ctrl-C and 143 for SIGTERM, where click would say
    "Aborted!" and exit 1 (a sweep ends its cell first and exits with the same codes itself)."""
    from nanoact.sweep.interrupt import exit_code

    try:
        code = cli.main(standalone_mode=False)
    except click.ClickException as e:
        e.show()
        code = e.exit_code
    except click.exceptions.Abort as e:  # click's wording of a KeyboardInterrupt (or SIGTERM: Terminated)
        code = exit_code(e.__cause__) if isinstance(e.__cause__, KeyboardInterrupt) else 130
        click.echo("interrupted (SIGTERM)" if code == 143 else "aborted", err=True)
    sys.exit(code or 0)


if __name__ == "__main__":  # pragma: no cover
    main()

