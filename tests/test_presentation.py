"""What a user sees of a sweep in MLflow: descriptions, the runs-table view, learning curves, the dataset,
report.html on the parent run, `nanoact ui` and `nanoact train` tracking by default."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TEXT
from mlflow import MlflowClient
from test_sweep import child_runs, uri, write_sweep

from nanoact import server, sweep
from nanoact.analysis.report import run_report
from nanoact.cli import cli
from nanoact.tracking import view_key


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One tiny sweep and its report, shared by the tests below (read-only for them)."""
    tmp = tmp_path_factory.mktemp("presentation")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        p = write_sweep(tmp, iters=20, grid='"model.activation" = ["relu", "gelu"]\n"train.seed" = [1, 2, 3]',
                        extra="log_interval = 5")
        res = sweep.run(sweep.load_sweep(path=p))
        report = run_report(["tiny"], tracking_uri=uri(tmp), out_dir=tmp / "reports" / "tiny", allow_anomalies=True)
    finally:
        os.chdir(cwd)
    return tmp, res, report


def test_experiment_and_runs_explain_themselves(swept):
    tmp, res, _ = swept
    c, runs = child_runs(tmp)
    exp = c.get_experiment_by_name("tiny")
    assert exp.tags["mlflow.note.content"].startswith("test sweep") and "model.activation" in exp.tags[
        "mlflow.note.content"]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs table
    assert json.loads(exp.tags["nanoact.grid.train.seed"]) == [1, 2, 3]
    view = json.loads(exp.tags[f"mlflow.sharedViewState.{view_key('tiny')}"])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "activation"}]
    assert {"params.`activation`", "params.`seed`", "metrics.`final/val_loss`"} <= set(view["selectedColumns"])
    assert view["compareRunCharts"][0]["metricKey"] == "val/loss"
    for r in runs:
        t = r.data.tags
        note = t["mlflow.note.content"]
        assert note.startswith("minigpt with ") and t["nanoact.grid_key"] in note
        assert t["mlflow.source.name"] == "nanoact sweep" and t["mlflow.user"]
        (ds,) = r.inputs.dataset_inputs
        assert ds.dataset.name == "corpus" and len(ds.dataset.digest) == 36
        assert json.loads(ds.dataset.source)["sha256"] == r.data.tags["nanoact.data_sha256"]
        assert {tag.key: tag.value for tag in ds.tags}["mlflow.data.context"] == "training"
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "train/loss_iter")]
        assert steps == [5, 15]  # every log_interval iterations between evals (0, 10, 20 log their own)
        assert [m.step for m in c.get_metric_history(r.info.run_id, "lr")] == [0, 5, 10, 15, 20]
    parent = c.get_run(res.parent_run_id)  # its description is the report's headline once a report ran
    assert parent.data.tags["mlflow.source.name"] == "nanoact sweep" and parent.data.tags["nanoact.n_cells"] == "6"


def test_report_html_on_the_parent_run_embeds_every_plot(swept, tmp_path):
    tmp, res, report = swept
    c = MlflowClient(uri(tmp))
    arts = {a.path for a in c.list_artifacts(res.parent_run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/summary.json"} <= arts
    page = Path(c.download_artifacts(res.parent_run_id, "report/report.html", str(tmp_path))).read_text()
    imgs = re.findall(r"<img [^>]*src=\"([^\"]+)\"", page)
    assert len(imgs) >= 5 and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "<table>" in page and not re.search(r'(src|href)="https?://', page)
    parent = c.get_run(res.parent_run_id)
    assert parent.data.tags["mlflow.note.content"].startswith(report.headline)
    for act in ("relu", "gelu"):
        assert f"report/{act}/final_val_loss_mean" in parent.data.metrics
        assert f"report/{act}/within_pd_tv" in parent.data.metrics


@pytest.mark.slow
def test_ui_is_one_process_and_prints_the_runs_table_url(swept):
    tmp, _, _ = swept
    port = server.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nanoact.cli", "ui", "--experiment", "tiny", "--port", str(port)],
                            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        t0 = time.monotonic()
        lines = []
        while not any("ready" in line for line in lines):
            lines.append(proc.stdout.readline())
            assert proc.poll() is None and time.monotonic() - t0 < 120, lines
        ready = next(line for line in lines if "ready" in line)
        exp_id = MlflowClient(uri(tmp)).get_experiment_by_name("tiny").experiment_id
        assert (f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning&"
                f"viewStateShareKey={view_key('tiny')}") in ready
        assert server.health(f"http://127.0.0.1:{port}")
        group = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == proc.pid]
        assert len(group) <= 3, group  # nanoact, mlflow's launcher, one uvicorn worker; no job runners
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_train_tracks_by_default_and_no_track_writes_nothing(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    args = ["train", "--set", f"data.corpus={corpus}", "--set", "train.max_iters=4", "--set", "train.eval_interval=2",
            "--set", "train.eval_iters=1", "--set", "model.n_layer=1", "--set", "model.n_embd=16",
            "--set", "model.n_head=2", "--set", "model.block_size=16", "--set", "eval.n_contexts=8"]
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    os.chdir(quiet)
    out = CliRunner().invoke(cli, [*args, "--no-track"])
    assert out.exit_code == 0, out.output
    assert not (quiet / "mlruns").exists() and "mlflow run" not in out.output
    os.chdir(tmp_path)
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert "nanoact ui --experiment train" in out.output
    c = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (run,) = c.search_runs([c.get_experiment_by_name("train").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.source.name"] == "nanoact train"
    assert "step 0: evaluating" in out.output  # progress from the start, before the first eval's numbers


def test_status_with_nothing_run_says_how_to_start(tmp_path):
    p = write_sweep(tmp_path)
    out = CliRunner().invoke(cli, ["status", "--file", str(p), "--study", "other"])
    assert "nothing has run yet for study other" in out.output
    assert f"nanoact sweep --file {p} --study other" in out.output


@pytest.mark.slow
def test_system_metrics_are_opt_in(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    args = ["train", "--set", f"data.corpus={corpus}", "--set", "train.max_iters=3000", "--set",
            "train.eval_interval=3000", "--set", "train.eval_iters=1", "--set", "model.n_layer=1", "--set",
            "model.n_embd=16", "--set", "model.n_head=2", "--set", "model.block_size=16", "--set",
            "eval.n_contexts=8", "--set", "train.threads=1"]
    for extra in ([], ["--system-metrics"]):
        out = CliRunner().invoke(cli, [*args, *extra])
        assert out.exit_code == 0, out.output
    c = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    plain, sampled = sorted(c.search_runs([c.get_experiment_by_name("train").experiment_id]),
                            key=lambda r: r.info.start_time)
    assert not any(k.startswith("system/") for k in plain.data.metrics)
    assert any(k.startswith("system/cpu") for k in sampled.data.metrics), sorted(sampled.data.metrics)


@pytest.mark.slow
def test_many_runs_logging_the_same_dataset_at_once_all_finish(tmp_path):
    """MLflow creates an experiment's dataset row get-or-create, not atomically: workers logging the corpus at
    the same moment race on a UNIQUE constraint. Every run must still get its dataset input and finish."""
    import threading

    from nanoact.tracking import MlflowTracker, ensure_experiment, open_store

    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    open_store(store)
    exp = ensure_experiment(store, "race")
    trackers = [MlflowTracker(store, exp) for _ in range(8)]
    for t in trackers:
        t.start("r", {})
    barrier, errors = threading.Barrier(len(trackers)), []

    def log(t):
        barrier.wait()
        try:
            t.log_dataset("corpus", "ab" * 32, "/data/corpus.txt")
            t.finish("FINISHED")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=log, args=(t,)) for t in trackers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    c = MlflowClient(store)
    for t in trackers:
        run = c.get_run(t.run_id)
        assert run.info.status == "FINISHED" and len(run.inputs.dataset_inputs) == 1
