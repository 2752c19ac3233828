"""The CLI: --help everywhere, train output, params."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from nanoact.cli import cli
from nanoact.errors import Terminated

COMMANDS = ["train", "sweep", "status", "experiments", "report", "ui", "params", "models", "activations"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_on_every_command(cmd):
    r = CliRunner().invoke(cli, [cmd, "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output and len(r.output.splitlines()) > 3


def test_every_command_has_help_text():
    for name, command in cli.commands.items():
        assert command.help or command.short_help, name


def test_train_prints_progress_final_metrics_and_speed(corpus_file):
    r = CliRunner().invoke(cli, [
        "train", "--model", "charlm", "--activation", "smelu_05", "--seed", "3",
        "--set", f"data.corpus={corpus_file}", "--set", "model.n_layer=1", "--set", "model.n_embd=16",
        "--set", "model.n_head=2", "--set", "model.block_size=16", "--set", "train.max_iters=20",
        "--set", "train.eval_interval=10", "--set", "train.eval_iters=2", "--set", "eval.n_contexts=16",
    ])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "training charlm with smelu_05, seed 3, 20 iters" in out
    assert "step 10:" in out and "step 20:" in out
    assert "final: train loss" in out and "tokens/s" in out and "ms/iter" in out
    assert "SmeLU(beta=0.5)" in out


def test_params_full_nanotransformer():
    r = CliRunner().invoke(cli, ["params", "--model", "nanotransformer", "--set", "model.n_layer=6",
                                 "--set", "model.n_embd=384", "--set", "model.n_head=6",
                                 "--set", "model.block_size=256", "--set", "model.bias=true"])
    assert r.exit_code == 0 and "10,795,841 parameters (10.80M)" in r.output


def test_experiments_lists_grid_sizes():
    r = CliRunner().invoke(cli, ["experiments"])
    assert r.exit_code == 0
    sizes = [("smoke", 6), ("partial", 9), ("cpu", 50), ("full", 9), ("zoo", 108), ("sources", 48), ("adaptive", 9)]
    for name, n in sizes:
        assert any(line.split()[0] == name and line.split()[1] == str(n) for line in r.output.splitlines())


@pytest.mark.parametrize("exc, code, said", [(KeyboardInterrupt(), 130, "aborted"),
                                             (Terminated("SIGTERM"), 143, "interrupted (SIGTERM)")])
def test_an_interruption_exits_with_the_shells_code(monkeypatch, capsys, exc, code, said):
    """click would say "Aborted!" and exit 1; the entry point exits 128 + the signal's number."""
    import sys

    from nanoact import cli as cli_module

    def interrupted():
        raise exc

    monkeypatch.setattr("nanoact.models.model_names", interrupted)
    monkeypatch.setattr(sys, "argv", ["nanoact", "models"])
    with pytest.raises(SystemExit) as e:
        cli_module.main()
    assert e.value.code == code and capsys.readouterr().err.strip() == said


def test_a_store_password_is_masked_in_the_error_line_and_a_bug_keeps_its_traceback():
    """The stores a command was given are recorded in ctx.meta and masked in its one `error:` line."""
    import click

    from nanoact.cli_group import NanoactGroup, remember_store
    from nanoact.errors import NanoactError

    url = "postgresql://u:s3cr3t-pw@h/db"

    @click.group(cls=NanoactGroup)
    def group():
        pass

    @group.command()
    def fails():
        remember_store(url)
        raise NanoactError(f"cannot open {url}:\n  refused (password s3cr3t-pw)")

    @group.command()
    def bug():
        raise KeyError("x")

    r = CliRunner().invoke(group, ["fails"])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == "error: cannot open postgresql://u:***@h/db: refused (password ***)\n"
    r = CliRunner().invoke(group, ["bug"])
    assert r.exit_code == 1 and isinstance(r.exception, KeyError)
