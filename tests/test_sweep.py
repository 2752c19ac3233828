"""Sweeps: every cell exactly once, resume, failures, workers, kills; the MLflow schema of each cell."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TEXT
from mlflow import MlflowClient

from nanoact import sweep
from nanoact.cli import cli
from nanoact.cli_group import UserError
from nanoact.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write_sweep(tmp_path: Path, *, iters: int = 20, grid: str | None = None, name: str = "tiny",
                extra: str = "") -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    grid = grid or '"model.activation" = ["relu", "gelu", "swish"]\n"train.seed" = [1, 2]'
    p = tmp_path / f"{name}.toml"
    p.write_text(f"""
name = "{name}"
description = "test sweep"
[config.model]
name = "minigpt"
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16
[config.train]
max_iters = {iters}
batch_size = 4
eval_interval = {max(iters // 2, 1)}
eval_iters = 2
warmup_iters = 2
lr_decay_iters = {iters}
lr = 3e-3
threads = 1
{extra}
[config.data]
corpus = "{corpus}"
[config.eval]
n_contexts = 32
[grid]
{grid}
""")
    return p


def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlruns/mlflow.db"


def child_runs(tmp_path: Path, experiment: str = "tiny", status: str | None = None):
    c = MlflowClient(uri(tmp_path))
    exp = c.get_experiment_by_name(experiment)
    flt = "tags.nanoact.role = 'cell'" + (f" and attributes.status = '{status}'" if status else "")
    return c, c.search_runs([exp.experiment_id], flt, max_results=1000)


def test_sweep_schema_and_resume(tmp_path):
    spec = sweep.load_sweep(path=write_sweep(tmp_path))
    res = sweep.run(spec)
    assert res.complete and res.trained == 6
    c, runs = child_runs(tmp_path, status="FINISHED")
    assert len(runs) == 6
    assert len({r.data.tags["nanoact.grid_key"] for r in runs}) == 6
    parent = res.parent_run_id
    for r in runs:
        t, p = r.data.tags, r.data.params
        assert t["mlflow.parentRunId"] == parent and t["nanoact.study"] == "tiny"
        assert t["nanoact.wiring_check"] == "passed"
        assert p["activation"] == p["model.activation"] == t["nanoact.activation"]
        assert p["seed"] == p["train.seed"] and p["model.n_embd"] == "16"
        assert {"nanoact.eval_set_sha256", "nanoact.data_sha256", "nanoact.activation_modules",
                "optuna.trial_number", "nanoact.git_commit", "nanoact.torch_version", "nanoact.device"} <= set(t)
        assert {"train/loss", "val/loss", "train/acc", "val/acc", "lr", "final/val_loss", "best/val_loss",
                "time/wall_s"} <= set(r.data.metrics)
        assert [m.step for m in c.get_metric_history(r.info.run_id, "val/loss")] == [0, 10, 20]
    eval_hashes = {r.data.tags["nanoact.eval_set_sha256"] for r in runs}
    assert len(eval_hashes) == 1
    r = runs[0]
    arts = {a.path for a in c.list_artifacts(r.info.run_id, "predictions")}
    assert arts == {f"predictions/step_{s}.npz" for s in (0, 10, 20)}
    z = np.load(c.download_artifacts(r.info.run_id, "predictions/step_20.npz", str(tmp_path)))
    assert z["probs"].dtype == np.float16 and z["probs"].shape == (32, len(set(TEXT)))
    assert np.abs(z["probs"].astype(np.float32).sum(1) - 1).max() < 1e-3
    assert z["targets"].shape == (32,) and int(z["step"]) == 20
    cfg = json.loads(Path(c.download_artifacts(r.info.run_id, "config.json", str(tmp_path))).read_text())
    assert cfg["model"]["activation"] == r.data.params["activation"]
    ck = torch.load(c.download_artifacts(r.info.run_id, "checkpoint/model.pt", str(tmp_path)), weights_only=True)
    assert ck["iter"] == 20 and "lm_head.weight" in ck["model"]
    # resume: nothing left to train, nothing touched
    again = sweep.run(sweep.load_sweep(path=tmp_path / "tiny.toml"))
    assert again.trained == 0 and again.complete
    _, runs2 = child_runs(tmp_path)
    assert sorted(r.info.run_id for r in runs2) == sorted(r.info.run_id for r in runs)


def test_status_and_dry_run_change_nothing(tmp_path):
    p = write_sweep(tmp_path)
    runner = CliRunner()
    out = runner.invoke(cli, ["sweep", "--file", str(p), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert out.output.count("  would run") == 6 and "6 cell(s) would run" in out.output
    assert not (tmp_path / "mlruns").exists()
    out = runner.invoke(cli, ["status", "--file", str(p)])
    assert out.exit_code == 0 and "nothing has run yet for study tiny (6 cells)" in out.output
    assert f"nanoact sweep --file {p}" in out.output  # the command that starts it
    assert not (tmp_path / "mlruns").exists()


def test_diverging_cell_fails_others_finish_and_retry(tmp_path):
    p = write_sweep(tmp_path, grid='"model.activation" = ["relu"]\n"train.lr" = [3e-3, 1e3]\n"train.seed" = [1]',
                    extra="grad_clip = 0.0\nmin_lr = 0.0")
    res = sweep.run(sweep.load_sweep(path=p))
    states = {s.cell.key: s for s in res.states}
    bad = states["model.activation=relu|train.lr=1000.0|train.seed=1"]
    assert bad.state == "failed" and "diverged" in bad.error
    assert states["model.activation=relu|train.lr=0.003|train.seed=1"].state == "done"
    c, runs = child_runs(tmp_path)
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 1 and "diverged" in failed[0].data.tags["nanoact.error"]
    # a plain rerun leaves the failed cell alone; --retry-failed tries it again in a new run
    assert sweep.run(sweep.load_sweep(path=p)).trained == 0
    assert len(child_runs(tmp_path)[1]) == 2
    sweep.run(sweep.load_sweep(path=p), sweep.SweepOptions(retry_failed=True))
    _, runs = child_runs(tmp_path)
    assert len(runs) == 3 and sum(r.info.status == "FINISHED" for r in runs) == 1


@pytest.mark.parametrize("body, match", [
    ('name = "x"\nbogus = 1\n[grid]\n"train.seed" = [1]', "unknown key 'bogus'"),
    ('[grid]\n"train.sede" = [1]', "unknown grid axis 'train.sede'"),
    ('[config.train]\nlr = "fast"\n[grid]\n"train.seed" = [1]', "train.lr: expected float"),
    ('[config.optim]\nlr = 1\n[grid]\n"train.seed" = [1]', r"unknown section \[optim\]"),
    ('[grid]\n"model.activation" = ["relu", "relu6"]', "unknown activation 'relu6'"),
    ('[grid]\n"model.name" = ["gpt5"]', "unknown model 'gpt5'"),
    ('[grid]\n"train.seed" = []', "non-empty list"),
    ('[grid', "not valid TOML"),
    ('name = "x"', r"\[grid\] must be a table"),
    ('[grid]\n"train.seed" = [42, "42 "]', "duplicate values 42 and '42 '"),
    ('[grid]\n"train.lr" = [1, 1.0]', "duplicate values 1 and 1.0"),
    ('[grid]\n"model.activation" = ["relu", " relu"]', "duplicate values 'relu' and ' relu'"),
    ('[grid]\n"model.activation" = ["swish", "swish(beta=1.0)"]', "duplicate values"),
    ('name = ".."\n[grid]\n"train.seed" = [1]', "'name' '..' must be"),
    ('name = "/etc"\n[grid]\n"train.seed" = [1]', "'name' '/etc' must be"),
    ('study = 3\n[grid]\n"train.seed" = [1]', "'study' 3 must be"),
    ('description = ["x"]\n[grid]\n"train.seed" = [1]', "'description' must be a string"),
])
def test_malformed_sweep_files_name_the_problem(tmp_path, body, match):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=match):
        sweep.load_sweep(path=p)
    out = CliRunner().invoke(cli, ["sweep", "--file", str(p)], standalone_mode=False, catch_exceptions=True)
    assert isinstance(out.exception, UserError) and isinstance(out.exception.__cause__, ConfigError)


def test_cli_errors_are_one_line_exit_2(tmp_path, monkeypatch):
    p = tmp_path / "bad.toml"
    p.write_text('[grid]\n"model.activation" = ["Relu"]')
    monkeypatch.chdir(tmp_path)
    for args in (["sweep", "--file", str(p)], ["sweep", "--experiment", "nope"],
                 ["train", "--activation", "swish(gamma=2)"], ["train", "--set", "model.n_layer=two"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, (args, r.output)
        assert r.stdout == "" and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not list(tmp_path.glob("mlruns"))  # refused before anything was created


def test_the_entry_point_prints_one_error_line_and_exits_2(tmp_path):
    """The one test of the real entry point (``python -m nanoact.cli``) in a fresh interpreter; the others run
    the command in process."""
    r = subprocess.run([sys.executable, "-m", "nanoact.cli", "train", "--set", "model.n_layer=two"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr == "error: model.n_layer: expected int, got 'two'\n"


def test_changed_config_is_not_mixed_into_an_existing_study(tmp_path):
    p = write_sweep(tmp_path, grid='"train.seed" = [1]')
    sweep.run(sweep.load_sweep(path=p))
    with pytest.raises(ConfigError, match="different config"):
        sweep.run(sweep.load_sweep(path=p, overrides=["train.lr=1e-2"]))
    # a new study name is fine
    spec = sweep.load_sweep(path=p, overrides=["train.lr=1e-2"]).with_study("tiny-lr")
    assert sweep.run(spec).trained == 1


def test_a_study_made_when_float32_was_the_default_still_resumes(tmp_path):
    # the fingerprints the previous version (train.dtype default float32) stored for the built-in studies
    assert sweep.load_sweep("cpu").fingerprint() == "3ca1a6d8e807f593"
    assert sweep.load_sweep("full").fingerprint() == "9dfdeb16972c0e4e"
    p = write_sweep(tmp_path, iters=4, grid='"train.seed" = [1]')
    old = sweep.run(sweep.load_sweep(path=p, overrides=["train.dtype=float32"]))  # as the old default wrote it
    assert old.trained == 1
    again = sweep.run(sweep.load_sweep(path=p))  # train.dtype = auto
    assert again.complete and again.trained == 0
    with pytest.raises(ConfigError, match="different config"):  # a real change of dtype is still refused
        sweep.run(sweep.load_sweep(path=p, overrides=["train.dtype=bfloat16"]))


@pytest.mark.slow
def test_custom_activation_example_runs(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    cmd = [sys.executable, str(REPO / "examples" / "custom_activation.py"), "--workdir", str(tmp_path / "w"),
           "--corpus", str(corpus), "--iters", "10"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "trained 4 cell(s)" in r.stdout and r.stdout.count(": done") == 4
    c = MlflowClient(f"sqlite:///{tmp_path}/w/mlruns/mlflow.db")
    exp = c.get_experiment_by_name("custom-activation")
    runs = c.search_runs([exp.experiment_id], "tags.nanoact.activation = 'sqrelu'")
    assert len(runs) == 2
    assert all(set(r.data.tags["nanoact.activation_modules"].split(";")) == {"SquaredReLU"} for r in runs)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "trained 0 cell(s)" in r.stdout


def _wait_for_lines(path: Path, n: int, timeout: float = 120) -> list[str]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {n} lines")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_sweep_resumes_without_losing_finished_cells(tmp_path, sig):
    p = write_sweep(tmp_path, iters=300)
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "nanoact.cli", "sweep", "--file", str(p), "--train-log", str(log)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_lines(log, 3)
        time.sleep(0.3)  # mid-cell
        before = {r.info.run_id: r for r in child_runs(tmp_path, status="FINISHED")[1]}
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    killed_key = log.read_text().splitlines()[-1].split("\t")[0]
    assert len(before) >= 1
    if sig == signal.SIGINT:
        assert "interrupted" in out
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    c, runs = child_runs(tmp_path)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["nanoact.grid_key"] for r in finished) == sorted(
        s.key for s in sweep.load_sweep(path=p).cells())
    for run_id, old in before.items():  # untouched
        now = c.get_run(run_id)
        assert now.info.status == "FINISHED" and now.info.end_time == old.info.end_time
    dead = [r for r in runs if r.info.status != "FINISHED"]
    if killed_key not in {r.data.tags["nanoact.grid_key"] for r in before.values()}:
        assert len(dead) == 1 and dead[0].data.tags["nanoact.grid_key"] == killed_key
        assert dead[0].info.status == "KILLED" and dead[0].data.tags["nanoact.error"]
    trained = [line.split("\t")[0] for line in log.read_text().splitlines()]
    assert sorted(set(trained)) == sorted(s.key for s in sweep.load_sweep(path=p).cells())
    assert all(trained.count(k) == (2 if k == killed_key else 1) for k in set(trained))


@pytest.mark.slow
def test_two_workers_run_every_cell_exactly_once(tmp_path):
    p = write_sweep(tmp_path, iters=40)
    log = tmp_path / "train.log"
    res = sweep.run(sweep.load_sweep(path=p), sweep.SweepOptions(workers=2, train_log=str(log)))
    assert res.complete
    lines = [line.split("\t") for line in log.read_text().splitlines()]
    keys = [line[0] for line in lines]
    assert sorted(keys) == sorted(s.key for s in sweep.load_sweep(path=p).cells())
    assert len({line[2] for line in lines}) == 2  # both workers trained
    _, runs = child_runs(tmp_path)
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
