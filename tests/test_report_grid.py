"""The report on real (tiny) sweeps stopped part-way: the cells guard checks the grid the sweep declared and names
every cell without a FINISHED run with its state (queued, running, failed, interrupted)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import optuna
import pytest
from mlflow import MlflowClient
from test_sweep import uri, write_sweep
from test_sweep_engine import _env, _sweep_cmd

from nanoact import sweep
from nanoact.analysis import guards as gd
from nanoact.analysis.runs import load_experiment
from nanoact.errors import NanoactError
from nanoact.sweep.handle import StudyHandle
from nanoact.tracking import Store

GRID = '"model.activation" = ["relu", "gelu", "swish"]\n"train.seed" = [1, 2]'


def _report_cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "nanoact.cli", "report", "--experiment", "tiny", "--no-log", *extra]


@pytest.mark.slow
def test_report_on_a_sweep_stopped_part_way_exits_non_zero_naming_the_missing_cells(tmp_path):
    """The issue's case: relu and gelu done (a complete 2 x 2 among the runs), the swish arm never finished.
    The worker is killed right after it took swish s1 off the queue, so swish s1 is RUNNING (a dead worker's,
    not yet settled) and swish s2 still queued."""
    p = write_sweep(tmp_path, iters=10, grid=GRID)
    r = subprocess.run(_sweep_cmd(p, "--plugin", "kill_plugin"), cwd=tmp_path, capture_output=True, text=True,
                       env=_env(NANOACT_KILL_AT="popped", NANOACT_KILL_AFTER="4"), timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr

    r = subprocess.run(_report_cmd(), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    anomalies = [line for line in r.stderr.splitlines() if line.startswith("ANOMALY: cells:")]
    assert len(anomalies) == 2, r.stderr
    assert "missing cell swish s1: running (trial 4 RUNNING in the Optuna study" in anomalies[0]
    assert "missing cell swish s2: queued (trial 5 WAITING in the Optuna study), never started" in anomalies[1]
    assert "\nGUARDS FAILED on tiny (2 anomalies: cells)" in "\n" + r.stdout
    md = (tmp_path / "reports" / "tiny" / "report.md").read_text()
    assert "All guards passed" not in md and "complete grid" not in md
    assert "analysed: 2 of 3 declared activations × 2 seeds, 4 of 6 declared cells" in md

    r = subprocess.run(_report_cmd("--allow-anomalies", "--out", "r2"), cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ANOMALY: cells: missing cell swish s1" in r.stderr  # still named, only the exit code differs
    e = json.loads((tmp_path / "r2" / "summary.json").read_text())["per_experiment"]["tiny"]
    assert [(m["activation"], m["seed"], m["state"]) for m in e["missing_cells"]] == [
        ("swish", "1", "running"), ("swish", "2", "queued")]


@pytest.mark.slow
def test_cell_states_of_a_stopped_sweep_and_where_they_come_from(tmp_path, monkeypatch):
    """failed, interrupted (Ctrl-C), queued, then running (a live worker holds it) and the grid read back from the
    study when the parent run lacks its tag; a study of another parent run is never used."""
    import nanoact.trainer

    p = write_sweep(tmp_path, iters=10, grid=GRID)
    real_train = nanoact.trainer.train

    def train(cfg, **kw):  # relu s1, relu s2, gelu s1 train; gelu s2 fails; Ctrl-C during swish s1
        if (cfg.model.activation, cfg.train.seed) == ("gelu", 2):
            raise RuntimeError("boom")
        if cfg.model.activation == "swish":
            raise KeyboardInterrupt
        return real_train(cfg, **kw)

    monkeypatch.setattr(nanoact.trainer, "train", train)
    res = sweep.run(sweep.load_sweep(path=p))
    assert res.interrupted
    client = Store(uri(tmp_path)).reader()

    def missing(**kw) -> dict[str, str]:
        er = load_experiment(client, "tiny", tracking_uri=uri(tmp_path), **kw)
        g = gd.check_cells(er.missing, er.duplicates, er.grid, er.outside_grid)
        assert not g.passed and len(g.details) == len(er.missing)
        return {f"{m.activation} s{m.seed}": m.describe() for m in er.missing}

    got = missing()
    assert sorted(got) == ["gelu s2", "swish s1", "swish s2"]
    assert got["gelu s2"].startswith("gelu s2: failed (trial 3: RuntimeError: boom); `nanoact sweep --retry-failed`")
    assert got["swish s1"].startswith("swish s1: interrupted (trial 4: interrupted (Ctrl-C")
    assert got["swish s2"] == "swish s2: queued (trial 5 WAITING in the Optuna study), never started"

    # a worker takes swish s2 and is training it (it holds the cell's lease)
    handle = StudyHandle.open(str(tmp_path / "mlruns" / "optuna-journal.log"), "tiny", uri(tmp_path))
    trial, lease = handle.pop({"model.activation": ["relu", "gelu", "swish"], "train.seed": [1, 2]})
    try:
        assert trial.params == {"model.activation": "swish", "train.seed": 2}
        assert missing()["swish s2"].startswith("swish s2: running (trial 5 RUNNING in the Optuna study")

        # the parent run lost its grid tag (or another tool wrote it): the grid comes from the study
        mc = MlflowClient(uri(tmp_path))
        mc.delete_tag(res.parent_run_id, "nanoact.grid")
        er = load_experiment(client, "tiny", tracking_uri=uri(tmp_path))
        assert er.grid.declared and "Optuna study 'tiny'" in er.grid.source and len(er.missing) == 3

        # a study of the same name that belongs to another parent run (e.g. a journal started afresh) is not read
        other = tmp_path / "other.log"
        foreign = optuna.create_study(study_name="tiny", storage=sweep.open_storage(str(other)))
        foreign.set_user_attr("mlflow_parent_run_id", "someone-else")
        with pytest.raises(NanoactError, match="belongs to parent run someone-else"):
            load_experiment(client, "tiny", storage=str(other))
        mc.set_tag(res.parent_run_id, "nanoact.grid", json.dumps({"model.activation": ["relu", "gelu", "swish"],
                                                                  "train.seed": [1, 2]}))
        assert missing()["swish s2"].startswith("swish s2: running")
    finally:
        lease.release()
        handle.close()
