"""The ``nanoact`` command line: thin wrappers over the library. Only this module talks to the terminal."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import click

from nanoact.errors import NanoactError

SET_HELP = "Override a config key, e.g. --set train.max_iters=200 (repeatable)."


class Progress:
    """Progress lines for long work: a rewritten status line on a terminal, periodic plain lines otherwise."""

    def __init__(self, prefix: str = "", stream=None, min_interval: float = 2.0):
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.min_interval = min_interval
        self._last = 0.0
        self._t0 = time.perf_counter()
        self._open = False

    def status(self, text: str) -> None:
        now = time.perf_counter()
        if self.tty:
            self.stream.write("\r\033[K" + self.prefix + text)
            self.stream.flush()
            self._open = True
        elif now - self._last >= self.min_interval:
            self.stream.write(self.prefix + text + "\n")
            self.stream.flush()
            self._last = now

    def line(self, text: str) -> None:
        if self._open:
            self.stream.write("\r\033[K")
            self._open = False
        self.stream.write(self.prefix + text + "\n")
        self.stream.flush()

    def eta(self, done: float, total: float) -> str:
        elapsed = time.perf_counter() - self._t0
        if done <= 0:
            return "ETA --"
        rest = elapsed * (total - done) / done
        return f"ETA {_fmt_secs(rest)}"

    def train_callback(self, event: dict[str, Any]) -> None:
        it, n = event["iter"], max(event["max_iters"], 1)
        if event["event"] == "iter":
            self.status(f"iter {it}/{n} loss {event['loss']:.4f} lr {event['lr']:.2e} {self.eta(it, n)}")
        else:
            self.line(
                f"step {it}: train loss {event['train/loss']:.4f}, val loss {event['val/loss']:.4f}, "
                f"val acc {event['val/acc']:.4f}"
                + (f", {event['tokens_per_s']:.0f} tok/s" if event["tokens_per_s"] else "")
            )


def _fmt_secs(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nanoact")
@click.option("-v", "--verbose", is_flag=True, help="Show library log messages.")
def cli(verbose: bool) -> None:
    """nanoact: activation-function ablations on small character-level language models.

    Typical use: `nanoact sweep --experiment smoke`, then `nanoact report --experiment smoke`.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")


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
@click.option("--tracking-uri", default=None, help="Also log the run to this MLflow store.")
@click.option("--experiment", "experiment_name", default="train", show_default=True,
              help="MLflow experiment name when --tracking-uri is given.")
def train_command(model, activation, seed, overrides, tracking_uri, experiment_name) -> None:
    """Train one cell with the shared trainer and print its final metrics.

    Defaults are nanoGPT's CPU recipe for shakespeare_char on minigpt; change anything with --set.
    """
    from nanoact.models import build_model
    from nanoact.trainer import train

    cfg = _config(model, activation, seed, overrides)
    build_model(cfg.model, 65)  # fail fast on bad names before loading data
    tracker = None
    if tracking_uri:
        from nanoact.tracking import MlflowTracker, ensure_experiment
        from nanoact.tracking_uri import mask_url, resolve_tracking_uri

        uri = resolve_tracking_uri(tracking_uri)
        tracker = MlflowTracker(uri, ensure_experiment(uri, experiment_name))
        click.echo(f"tracking to {mask_url(uri)} (experiment {experiment_name})")
    m, t = cfg.model, cfg.train
    click.echo(f"training {m.name} with {m.activation}, seed {t.seed}, {t.max_iters} iters")
    progress = Progress()
    res = train(cfg, tracker=tracker, progress=progress.train_callback)
    mt = res.metrics
    click.echo(f"parameters: {res.n_params:,} | device: {res.device} | activation modules: "
               f"{', '.join(sorted(set(res.activation_modules)))}")
    click.echo(
        f"final: train loss {mt['final/train_loss']:.4f}, val loss {mt['final/val_loss']:.4f}, "
        f"val acc {mt['final/val_acc']:.4f}, best val loss {mt['best/val_loss']:.4f}"
    )
    ms = 1000 * mt["time/train_s"] / max(t.max_iters, 1)
    click.echo(f"speed: {mt['tokens_per_s_mean']:,.0f} tokens/s, {ms:.1f} ms/iter (evals excluded); "
               f"wall time {mt['time/wall_s']:.1f} s")
    if tracker is not None:
        click.echo(f"mlflow run: {tracker.run_id}")


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
        doc = (get_model_class(name).__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name:16s} {doc}")


@cli.command("activations", short_help="List the registered activations.")
def activations_command() -> None:
    """List activation names with their parameters and defaults."""
    from nanoact import activations

    for name in activations.activation_names():
        spec = activations.get_spec(name)
        params = ", ".join(f"{k}={v}" for k, v in spec.params.items())
        doc = (spec.doc or "").strip().splitlines()[0] if spec.doc else ""
        click.echo(f"{name + (f'({params})' if params else ''):50s} {doc}")


def main() -> None:
    """Entry point: user errors are one line on stderr and exit code 2; bugs keep their traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except NanoactError as e:
        click.echo(f"error: {' '.join(str(e).split())}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()

