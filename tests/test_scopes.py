"""Studies and slices never overwrite or mix; every printed hint works as printed; read-only commands name the
store they read and create none; `experiments` survives a broken file. All through the command line."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_sweep import write_sweep

from nanoact import server
from nanoact.tracking import view_filter, view_key

GRID = '"model.activation" = ["relu", "gelu"]\n"train.seed" = [1, 2]'


def nanoact(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "NANOACT_STORAGE")}
    return subprocess.run([sys.executable, "-m", "nanoact.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_hint(line: str, cwd: Path) -> subprocess.CompletedProcess:
    """A printed `nanoact ...` command, run exactly as printed (the program name aside)."""
    argv = shlex.split(line)
    assert argv[0] == "nanoact", line
    return nanoact(*argv[1:], cwd=cwd)


def hints(text: str, prefix: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"{prefix}\s*(nanoact [^\n]*?)(?:\s{{2,}}\(.*)?$", text, re.M)]


def run_ui_hint(line: str, cwd: Path) -> str:
    """Start a printed `nanoact ui ...` on a free port, wait for its URL, stop it with Ctrl-C; returns the URL line."""
    argv = shlex.split(line)[1:] + ["--port", str(server.free_port())]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    proc = subprocess.Popen([sys.executable, "-m", "nanoact.cli", *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        t0, out = time.monotonic(), []
        while not any("ready" in x for x in out):
            out.append(proc.stdout.readline())
            assert proc.poll() is None and time.monotonic() - t0 < 120, (out, proc.stderr.read())
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0, out
    assert not proc.stderr.read().strip()  # quiet by default: no uvicorn start-up lines, no access log
    return next(x for x in out if "ready" in x)


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory):
    """Experiment `tiny` with two studies: `tiny` (the default, 10 iterations) and `short` (6 iterations, its own
    Optuna journal, the store named by --tracking-uri), the second made only by following printed hints."""
    tmp = tmp_path_factory.mktemp("scopes")
    p = write_sweep(tmp, iters=10, grid=GRID)
    r = nanoact("sweep", "--file", str(p), cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    store = f"sqlite:///{tmp}/mlruns/mlflow.db"
    opts = ["--file", str(p), "--set", "train.max_iters=6", "--study", "short", "--storage", str(tmp / "j.log")]
    return tmp, p, store, opts


@pytest.mark.slow
def test_every_printed_hint_runs_as_printed(two_studies, tmp_path):
    tmp, p, store, opts = two_studies
    elsewhere = tmp_path / "elsewhere"  # hints followed from another folder still find the same study and store
    elsewhere.mkdir()
    r = nanoact("status", *opts, cwd=tmp)
    assert r.returncode == 0 and "nothing has run yet for study short" in r.stdout, r.stdout + r.stderr
    (start,) = [line.strip() for line in r.stdout.splitlines() if line.strip().startswith("nanoact sweep")]
    for o in opts:
        assert shlex.quote(o) in start  # every --file, --set, --study, --storage the user gave
    r = run_hint(start + f" --tracking-uri {store} --init", elsewhere)  # enqueue only, to see `status` resume
    assert r.returncode == 0, r.stderr
    r = nanoact("status", *opts, cwd=tmp)
    (resume,) = hints(r.stdout, "resume with:")
    r = run_hint(resume + f" --tracking-uri {store}", elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    report, ui = hints(r.stdout, "next:") + hints(r.stdout, r"^\s+")[-1:]
    assert "--study short" in report and f"--tracking-uri {store}" in report and "--study short" in ui
    r = run_hint(report + " --allow-anomalies", elsewhere)  # 2 seeds: guards may fire, that exits 3 by design
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"reading MLflow store {store}" in r.stdout
    ready = run_ui_hint(ui, elsewhere)
    assert f"viewStateShareKey={view_key('short')}" in ready and "study short" in ready
    assert not (elsewhere / "mlruns").exists()


@pytest.mark.slow
def test_two_studies_in_one_experiment_stay_apart(two_studies):
    tmp, p, store, opts = two_studies
    if not any(r.data.tags.get("nanoact.study") == "short" for r in _cells(store)):
        r = nanoact("sweep", *opts, "--tracking-uri", store, cwd=tmp)
        assert r.returncode == 0, r.stdout + r.stderr
    c = MlflowClient(store)
    exp = c.get_experiment_by_name("tiny")
    cells = _cells(store)
    names = {}
    for study in ("tiny", "short"):
        names[study] = sorted(r.info.run_name for r in cells if r.data.tags["nanoact.study"] == study)
    assert names["tiny"] == ["minigpt-gelu-s1", "minigpt-gelu-s2", "minigpt-relu-s1", "minigpt-relu-s2"]
    assert names["short"] == [f"{n} (short)" for n in names["tiny"]]  # a second study's runs are told apart
    # a KILLED attempt of the same study must not join the view's groups
    killed = c.create_run(exp.experiment_id, run_name="killed", tags={"nanoact.study": "short",
                                                                      "nanoact.role": "cell"})
    c.set_terminated(killed.info.run_id, "KILLED")
    for study in ("tiny", "short"):
        view = json.loads(exp.tags[f"mlflow.sharedViewState.{view_key(study)}"])
        assert view["searchFilter"] == view_filter(study)
        shown = c.search_runs([exp.experiment_id], view["searchFilter"], max_results=100)
        assert len(shown) == 4 and {r.data.tags["nanoact.study"] for r in shown} == {study}
        assert {r.info.status for r in shown} == {"FINISHED"}
    c.delete_run(killed.info.run_id)
    # reports: one folder per study, the study named in the title and the headline
    r = nanoact("report", "--experiment", "tiny", "--allow-anomalies", cwd=tmp)
    assert r.returncode == 2 and "several studies" in r.stderr
    for study in ("tiny", "short"):
        r = nanoact("report", "--experiment", "tiny", "--study", study, "--allow-anomalies", cwd=tmp)
        assert r.returncode == 0, r.stdout + r.stderr
        md = (tmp / "reports" / "tiny" / study / "report.md").read_text()
        assert md.startswith(f"# nanoact report: tiny, study {study}\n")
        assert re.search(rf"\*\*Headline:\*\* \[study {study}\]", md)
        assert f"[study {study}]" in r.stdout
    assert not (tmp / "reports" / "tiny" / "report.md").exists()


def _cells(store: str):
    c = MlflowClient(store)
    exp = c.get_experiment_by_name("tiny")
    return c.search_runs([exp.experiment_id], "tags.`nanoact.role` = 'cell'", max_results=1000)


@pytest.mark.slow
def test_a_slice_report_never_replaces_the_full_one(tmp_path):
    p = write_sweep(tmp_path, iters=10, grid='"model.activation" = ["relu", "gelu", "swish"]\n"train.seed" = [1, 2]')
    assert nanoact("sweep", "--file", str(p), cwd=tmp_path).returncode == 0
    c = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (parent,) = c.search_runs([c.get_experiment_by_name("tiny").experiment_id], "tags.`nanoact.role` = 'parent'")
    pid = parent.info.run_id
    r = nanoact("report", "--experiment", "tiny", "--allow-anomalies", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    full = c.get_run(pid)
    note = full.data.tags["mlflow.note.content"]
    assert {f"report/{a}/final_val_loss_{s}" for a in ("relu", "gelu", "swish") for s in ("mean", "sd")} <= set(
        full.data.metrics)
    full_md = (tmp_path / "reports" / "tiny" / "report.md").read_text()
    r = nanoact("report", "--experiment", "tiny", "--where", "model.activation=relu", "--allow-anomalies",
                cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[slice model.activation=relu]" in r.stdout
    after = c.get_run(pid)
    assert after.data.tags["mlflow.note.content"] == note  # the description stays the full report's
    assert after.data.metrics == full.data.metrics  # and so do its report/<act>/* metrics
    assert (tmp_path / "reports" / "tiny" / "report.md").read_text() == full_md
    arts = {a.path for a in c.list_artifacts(pid, "report-slices")}
    assert any("model.activation_relu" in a for a in arts), arts
    assert "report/report.md" in {a.path for a in c.list_artifacts(pid, "report")}  # the full report's stay
    # a full report that no longer covers an activation marks its old metrics stale (NaN newest value)
    for run in c.search_runs([c.get_experiment_by_name("tiny").experiment_id],
                             "tags.`nanoact.role` = 'cell' and params.activation = 'swish'"):
        c.delete_run(run.info.run_id)
    r = nanoact("report", "--experiment", "tiny", "--allow-anomalies", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    m = c.get_run(pid).data.metrics
    assert m["report/swish/final_val_loss_mean"] != m["report/swish/final_val_loss_mean"]  # NaN
    assert m["report/relu/final_val_loss_mean"] == m["report/relu/final_val_loss_mean"]


def test_status_and_ui_in_an_empty_folder_name_the_store_and_create_none(tmp_path):
    p = write_sweep(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = nanoact("status", "--file", str(p), cwd=empty)
    assert r.returncode == 0, r.stderr
    assert f"Optuna storage {empty.resolve()}/mlruns/optuna-journal.log" in r.stdout
    assert "that storage does not exist" in r.stdout
    r = nanoact("ui", "--experiment", "tiny", "--port", str(server.free_port()), cwd=empty)
    assert r.returncode == 2 and f"no MLflow store at {empty.resolve()}/mlruns/mlflow.db" in r.stderr
    assert list(empty.iterdir()) == []


def test_experiments_lists_every_file_and_marks_the_broken_one(tmp_path):
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    write_sweep(sweeps, name="mine")
    (sweeps / "broken.toml").write_text("name = 'broken'\n[grid\n")
    (sweeps / "zzz.toml").write_text("name = 'zzz'\n[grid]\n\"model.activation\" = []\n")
    r = nanoact("experiments", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert "BROKEN [./sweeps/broken.toml]" in lines["broken"]
    assert "BROKEN [./sweeps/zzz.toml]" in lines["zzz"]  # listing goes on after a broken file
    assert "[./sweeps/mine.toml]" in lines["mine"] and "[built-in]" in lines["smoke"]
    assert "2 sweep files did not load" in r.stderr


def test_a_user_file_in_the_builtin_folder_is_not_builtin(tmp_path):
    from nanoact.sweep import builtin_sweeps_dir, is_builtin

    assert is_builtin(builtin_sweeps_dir() / "smoke.toml")
    assert not is_builtin(builtin_sweeps_dir() / "mine.toml")


def test_near_misses_get_a_suggestion_and_a_set_typo_is_blamed_on_set(tmp_path):
    from click.testing import CliRunner

    from nanoact.cli import cli

    p = write_sweep(tmp_path)
    r = CliRunner().invoke(cli, ["sweep", "--file", str(p), "--set", "train.max_iter=3", "--dry-run"])
    assert r.exit_code == 2 and r.output.startswith("error: --set: unknown config key 'train.max_iter' (did you "
                                                    "mean 'train.max_iters'?)"), r.output
    r = CliRunner().invoke(cli, ["params", "--activation", "gleu"])
    assert r.exit_code == 2 and "(did you mean 'gelu'?)" in r.output
    r = CliRunner().invoke(cli, ["params", "--model", "minigtp"])
    assert r.exit_code == 2 and "(did you mean 'minigpt'?)" in r.output


def test_models_lists_whole_first_sentences_without_rst_markup():
    from click.testing import CliRunner

    from nanoact.cli import cli

    out = CliRunner().invoke(cli, ["models"]).output
    lines = out.splitlines()
    assert lines and all(line.rstrip().endswith(".") and "``" not in line for line in lines), out


@pytest.mark.slow
def test_optuna_dashboard_sees_short_numbers_and_a_note_on_seeds(tmp_path):
    import optuna

    from nanoact import sweep
    from nanoact.sweep.storage import open_storage

    p = write_sweep(tmp_path, iters=4, grid='"model.activation" = ["relu"]\n"train.seed" = [1, 2]')
    res = sweep.run(sweep.load_sweep(path=p))
    assert res.complete
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    for t in study.trials:
        assert "nanoact.final" not in t.user_attrs
        assert all(isinstance(t.user_attrs[k], float) for k in ("final_val_loss", "final_val_acc", "wall_s"))
        assert max(len(str(v)) for v in t.user_attrs.values()) < 80  # one line in the dashboard's trial table
    storage = open_storage(None)
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("tiny"))
    assert attrs["dashboard:note_ver"] == 1 and "`train.seed` is a replicate" in attrs["dashboard:note_str:0"]
    states = sweep.status(sweep.load_sweep(path=p))  # status reads the new attrs
    assert sorted(s.final_val_loss for s in states) == sorted(t.value for t in study.trials)


@pytest.mark.slow
def test_the_hints_after_ctrl_c_resume_the_same_study(tmp_path):
    """Ctrl-C, then the resume command that `sweep` prints and the one `status` prints: both keep the --set and
    --study, so the study (and its fingerprint) is the same one and they exit 0."""
    p = write_sweep(tmp_path, iters=10, grid='"model.activation" = ["relu"]\n"train.seed" = [1, 2]')
    opts = ["--file", str(p), "--set", "train.max_iters=400", "--set", "train.lr_decay_iters=400",
            "--set", "train.eval_interval=200", "--study", "long"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "NANOACT_STORAGE")}
    proc = subprocess.Popen([sys.executable, "-m", "nanoact.cli", "sweep", *opts], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if "step 0: evaluating" in line or "iter " in line:  # training has started
            proc.send_signal(signal.SIGINT)
            break
    out += proc.stdout.readlines()
    assert proc.wait(timeout=120) != 0, "".join(out)
    (resume,) = hints("".join(out), "resume with:")
    r = nanoact("status", *opts, cwd=tmp_path)
    (from_status,) = hints(r.stdout, "resume with:")
    assert resume == from_status and all(shlex.quote(o) in resume for o in opts)
    r = run_hint(resume, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 done of 2 cells" in r.stdout
