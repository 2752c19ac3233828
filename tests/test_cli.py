"""The CLI: --help everywhere, train output, params."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from nanoact.cli import cli

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
    for name, n in [("smoke", 6), ("partial", 9), ("cpu", 50), ("full", 9), ("zoo", 108), ("sources", 48)]:
        assert any(line.split()[0] == name and line.split()[1] == str(n) for line in r.output.splitlines())
