"""The ``nanoact`` command line: thin wrappers over the library. The sweep commands are in ``nanoact.cli_sweep``,
how errors are shown in ``nanoact.cli_group``, progress lines in ``nanoact.progress``."""

from __future__ import annotations

import logging
import math
import os
import sys

import click

from nanoact.cli_group import SET_HELP, NanoactGroup, remember_store, store_uri
from nanoact.cli_sweep import experiments_command, status_command, sweep_command
from nanoact.errors import NanoactError
from nanoact.tracking import schema as S


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


for _command in (sweep_command, status_command, experiments_command):
    cli.add_command(_command)


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
    best = "" if mt[S.BEST_VAL_LOSS] == mt[S.FINAL_VAL_LOSS] else f", best val loss {mt[S.BEST_VAL_LOSS]:.4f}"
    click.echo(f"final: train loss {mt['final/train_loss']:.4f}, val loss {mt['final/val_loss']:.4f}, "
               f"val acc {mt['final/val_acc']:.4f}{best}")
    ms = 1000 * mt[S.TIME_TRAIN_S] / max(t.max_iters, 1)
    click.echo(f"speed: {mt['tokens_per_s_mean']:,.0f} tokens/s, {ms:.1f} ms/iter (evals excluded); "
               f"wall time {mt['time/wall_s']:.1f} s")
    if tracker is not None:
        click.echo(f"mlflow run {tracker.run_id} in experiment {experiment_name}; browse it with "
                   f"`nanoact ui --experiment {experiment_name}`")


def _train_tracker(tracking_uri, experiment_name: str, system_metrics: bool):
    from nanoact import tracking
    from nanoact.tracking import check_tracking_server
    from nanoact.tracking_uri import display_url

    uri = store_uri(tracking_uri)
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
    uri = store_uri(tracking_uri)
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
    from nanoact.tracking.store import check_database
    from nanoact.tracking_uri import display_url

    server.check_port_free(host, port)  # else another server's /health answer would read as "ready"
    spec = server.server_spec(backend_store_uri, artifacts_destination, host, port, allowed_hosts, server_workers)
    remember_store(spec.backend_store_uri)
    check_database(spec.backend_store_uri)
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

