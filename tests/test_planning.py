"""Dry-run estimates: parameters, activation memory, FLOPs and time, computed without training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import tiny_overrides
from test_sweep import write_sweep

from nanoact import planning, sweep
from nanoact.cli import cli
from nanoact.config import RunConfig, apply_overrides
from nanoact.errors import NanoactError
from nanoact.models import build_model


def _cfg(**kw) -> RunConfig:
    return apply_overrides(RunConfig(), tiny_overrides(**kw))


def test_model_numbers_come_from_the_models_shapes():
    cfg = _cfg()
    est = planning.estimate(cfg, 30)
    assert est.n_params == build_model(cfg.model, 30, seed=1).num_params()
    assert est.state_bytes == 16 * est.n_params
    # every saved activation carries the batch: twice the batch, exactly twice the bytes
    assert planning.estimate(_cfg(**{"train.batch_size": 8}), 30).activation_bytes == 2 * est.activation_bytes
    assert planning.estimate(_cfg(**{"model.block_size": 32}), 30).activation_bytes > 1.9 * est.activation_bytes
    # 6N + 12 L d T per trained token (2 attention layers of width 16), forward-only evals a third of it
    per_token = 6 * est.n_params + 12 * 2 * 16 * 16
    assert est.train_flops == per_token * 20 * 4 * 16
    evals = 3  # steps 0, 10, 20
    assert est.eval_flops == pytest.approx(per_token / 3 * (evals * 2 * 2 * 4 + evals * 32) * 16)
    assert est.gpu_s == pytest.approx((est.train_flops + est.eval_flops) / (312e12 * 0.20))
    assert est.cpu is None and est.cpu_s is None


def _run(iters, interval, eval_iters, n_ctx, train_s, loss_s, pred_s):
    params = {"train.max_iters": str(iters), "train.eval_interval": str(interval), "train.eval_iters": str(eval_iters),
              "eval.n_contexts": str(n_ctx), "train.predictions": "True"}
    metrics = {"time/train_s": train_s, "time/loss_evals_s": loss_s, "time/prediction_evals_s": pred_s}
    return SimpleNamespace(data=SimpleNamespace(params=params, metrics=metrics))


def test_cpu_time_scales_the_measured_per_unit_costs():
    # 10 iters in 5 s (0.5 s each); 2 eval steps x 2 splits x 3 batches in 1.2 s (0.1 s per batch);
    # 2 x 8 contexts in 1.6 s (0.1 s per context). The median of three runs is the middle one.
    runs = [_run(10, 10, 3, 8, 5.0, 1.2, 1.6), _run(10, 10, 3, 8, 50.0, 12.0, 16.0), _run(10, 10, 3, 8, 1, 1, 1)]
    m = planning.cpu_measure(runs)
    assert (m.n_runs, m.s_per_iter) == (3, 0.5) and (m.s_per_loss_batch, m.s_per_context) == pytest.approx((0.1, 0.1))
    cfg = _cfg()  # 20 iters, 3 eval steps of 2 x 2 batches, 32 contexts each
    est = planning.estimate(cfg, 30, runs=lambda c: runs)
    assert est.cpu_s == pytest.approx(20 * 0.5 + 12 * 0.1 + 96 * 0.1)
    old = _run(10, 10, 3, 8, 5.0, 1.2, 1.6)
    del old.data.metrics["time/prediction_evals_s"]  # logged before that metric existed: not used
    assert planning.cpu_measure([old]) is None


@pytest.mark.slow
def test_dry_run_prints_estimates_measured_from_finished_cells(tmp_path):
    p = write_sweep(tmp_path, iters=4)
    runner = CliRunner()
    out = runner.invoke(cli, ["sweep", "--file", str(p), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "3 distinct config(s); cells that differ only in train.seed share one" in out.output
    assert out.output.count("no finished CPU run of this model and batch size") == 3
    assert "A100 (bf16 peak 312 TFLOP/s at an assumed 20% MFU)" in out.output
    assert not (tmp_path / "mlruns").exists()
    assert sweep.run(sweep.load_sweep(path=p)).complete
    out = runner.invoke(cli, ["sweep", "--file", str(p), "--set", "train.max_iters=400", "--study", "longer",
                              "--dry-run"])
    assert out.exit_code == 0, out.output
    assert out.output.count("from 2 finished CPU run(s) of this model and batch in the store") == 3
    assert "grid total, one worker: cpu " in out.output and "cpu unknown" not in out.output


def _exit(out) -> int:
    """The exit code ``nanoact`` would give (``main`` maps a NanoactError to 2)."""
    return 2 if isinstance(out.exception, NanoactError) else out.exit_code


def test_dry_run_shows_the_config_its_overrides_and_whether_the_study_would_accept_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = write_sweep(tmp_path, iters=4)
    runner = CliRunner()
    out = runner.invoke(cli, ["sweep", "--file", str(p), "--set", "train.lr=0.01", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "base config (" in out.output and "with --set" in out.output
    assert " max_iters=4 " in out.output and " lr=0.01 " in out.output  # the resolved values, grid axes left out
    assert "--set changed from the sweep file: train.lr 0.003 -> 0.01" in out.output
    assert "study 'tiny' in " in out.output and "does not exist yet; the sweep would create it" in out.output
    assert not (tmp_path / "mlruns").exists()
    assert runner.invoke(cli, ["sweep", "--file", str(p), "--init"]).exit_code == 0  # the study, no training
    out = runner.invoke(cli, ["sweep", "--file", str(p), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "--set changed" not in out.output
    assert "exists (0 of 6 cells done), created from this config and grid" in out.output
    journal = (tmp_path / "mlruns" / "optuna-journal.log").read_bytes()
    # another config: named key by key, the cells marked refused, exit 2 as the real run, nothing written
    out = runner.invoke(cli, ["sweep", "--file", str(p), "--set", "train.max_iters=6", "--dry-run"])
    assert _exit(out) == 2, out.output
    assert "exists, created from a different config or grid; the sweep would refuse it" in out.output
    assert "  train.max_iters: 4 in the study, 6 here" in out.output
    assert "no cell would run" in out.output and out.output.count(" refused\n") == 6
    p.write_text(p.read_text().replace('"train.seed" = [1, 2]', '"train.seed" = [1, 2, 3]'))
    out = runner.invoke(cli, ["sweep", "--file", str(p), "--dry-run"])
    assert _exit(out) == 2 and "  grid train.seed: [1, 2] in the study, [1, 2, 3] here" in out.output, out.output
    assert (tmp_path / "mlruns" / "optuna-journal.log").read_bytes() == journal
