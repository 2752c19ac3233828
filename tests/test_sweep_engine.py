"""The sweep engine under attack: the Optuna record, kill -9 at every stage of a cell, PID namespaces, and
concurrent first use of a fresh store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from test_sweep import _wait_for_lines, child_runs, uri, write_sweep

from nanoact import sweep
from nanoact.events import Planned
from nanoact.sweep import state as S
from nanoact.sweep.handle import StudyHandle
from nanoact.sweep.leases import open_leases

TESTS = Path(__file__).resolve().parent


def _study(tmp_path: Path, name: str = "tiny"):
    journal = str(tmp_path / "mlruns" / "optuna-journal.log")
    return optuna.load_study(study_name=name, storage=sweep.open_storage(journal))


def check_record(study, runs) -> None:
    """Optuna is a true record: every trial is a cell; a COMPLETE trial's params are the cell its MLflow run
    trained, its value that run's final val loss, its intermediate values the run's val loss curve."""
    by_trial = {}
    for r in runs:
        by_trial.setdefault(int(r.data.tags["optuna.trial_number"]), []).append(r)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for t in study.trials:
        assert t.user_attrs.get(S.A_GRID_KEY) and t.params, f"pseudo-trial {t.number}: {t}"
        assert sweep.grid_key(t.params) == t.user_attrs[S.A_GRID_KEY]
        if t.state != TrialState.COMPLETE:
            continue
        (run,) = [r for r in by_trial[t.number] if r.info.status == "FINISHED"]
        assert run.data.tags["nanoact.grid_key"] == t.user_attrs[S.A_GRID_KEY]
        assert {k: run.data.params[k] for k in t.params} == {k: str(v) for k, v in t.params.items()}
        assert t.value == run.data.metrics["final/val_loss"]


def assert_settled(tmp_path: Path, p: Path, name: str = "tiny") -> list:
    """After a plain rerun: one FINISHED run per cell, nothing RUNNING anywhere, the parent run ended."""
    cells = sorted(c.key for c in sweep.load_sweep(path=p).cells())
    c, runs = child_runs(tmp_path, name)
    assert sorted(r.data.tags["nanoact.grid_key"] for r in runs if r.info.status == "FINISHED") == cells
    assert not [r for r in runs if r.info.status == "RUNNING"]
    exp = c.get_experiment_by_name(name)
    (parent,) = c.search_runs([exp.experiment_id], "tags.nanoact.role = 'parent'")
    assert parent.info.status == "FINISHED"
    study = _study(tmp_path, name)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    check_record(study, runs)
    return runs


def test_pop_trial_takes_enqueued_params_and_never_creates_a_trial(tmp_path):
    """The one place below Optuna's public API: popping sets the enqueued params, takes the cell's lease,
    creates nothing when the queue is empty, and never hands one trial to two poppers."""
    storage = sweep.open_storage(str(tmp_path / "j.log"))
    study = optuna.create_study(study_name="s", storage=storage)
    axes = {"model.activation": ["relu", "gelu"], "train.seed": [1, 2, 3]}
    for act in axes["model.activation"]:
        for seed in axes["train.seed"]:
            study.enqueue_trial({"model.activation": act, "train.seed": seed}, user_attrs={"grid_key": f"{act}{seed}"})
    popped, lock = [], threading.Lock()
    leases = open_leases(str(tmp_path / "j.log"), "s")
    handle = StudyHandle(study, storage, leases, f"sqlite:///{tmp_path}/mlflow.db")

    def popper():
        while (got := handle.pop(axes)) is not None:
            with lock:
                popped.append(got[0])
            assert leases.try_hold(got[0].user_attrs["grid_key"]) is None  # we hold the cell's lease

    threads = [threading.Thread(target=popper) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(t.number for t in popped) == list(range(6))  # each exactly once
    assert handle.pop(axes) is None and len(study.trials) == 6  # no trial created
    for t in popped:
        assert t.params == study.trials[t.number].system_attrs["fixed_params"]
        assert t.user_attrs["grid_key"] == f"{t.params['model.activation']}{t.params['train.seed']}"


def test_storage_location_decides_the_kind_of_every_storage_setting(tmp_path):
    """One function reads --storage: a journal (the default, a path, journal:PATH), SQLite, PostgreSQL; any other
    URL is refused, with its reason, by whatever opens it; file storages keep their leases beside the file."""
    from nanoact.errors import ConfigError
    from nanoact.sweep.storage import StorageKind, storage_location

    default = storage_location(None)
    assert (default.kind, default.path) == (StorageKind.JOURNAL, tmp_path / "mlruns" / "optuna-journal.log")
    assert not default.exists() and not default.is_rdb and default.display() == str(default.path)
    for given in ("q/j.log", "journal:q/j.log", str(tmp_path / "q" / "j.log")):
        where = storage_location(given)
        assert (where.kind, where.path, where.url) == (StorageKind.JOURNAL, tmp_path / "q" / "j.log", given)
    lite = storage_location("sqlite:///s.db")
    assert (lite.kind, lite.path, lite.is_rdb, lite.exists()) == (StorageKind.SQLITE, tmp_path / "s.db", True, True)
    held = open_leases("sqlite:///s.db", "s").try_hold("cell")
    assert held is not None and [p.suffix for p in lite.leases_folder.iterdir()] == [".lock"]
    held.release()
    pg = storage_location("postgresql+psycopg2://u:s3cret@db.example/optuna")
    assert (pg.kind, pg.path, pg.leases_folder, pg.problem) == (StorageKind.POSTGRES, None, None, None)
    assert "s3cret" not in pg.display() and "db.example/optuna" in pg.display()
    for url, why in (("postgresql://u@h/db", "postgresql\\+psycopg2://"), ("mysql://u@h/db", "must be")):
        where = storage_location(url)
        assert where.kind is StorageKind.UNSUPPORTED and where.exists()  # refused when opened, not when asked
        for opening in (sweep.open_storage, lambda u: open_leases(u, "s")):
            with pytest.raises(ConfigError, match=why):
                opening(url)


def test_lease_is_exclusive_and_released_by_the_kernel_when_its_holder_dies(tmp_path):
    leases = open_leases(str(tmp_path / "j.log"), "s")
    held = leases.try_hold("cell")
    assert held is not None and leases.try_hold("cell") is None  # exclusive, even within one process
    held.release()
    code = ("import os, sys, time; from nanoact.sweep.leases import open_leases; "
            f"l = open_leases({str(tmp_path / 'j.log')!r}, 's').try_hold('cell'); print(l is not None, flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "True"
        assert leases.try_hold("cell") is None  # held by a live process
        proc.kill()
        proc.wait()
        again = leases.try_hold("cell")  # the kernel dropped the dead holder's lock
        assert again is not None
        again.release()
    finally:
        proc.kill()


def test_optuna_record_is_true(tmp_path):
    p = write_sweep(tmp_path, iters=10, grid='"model.activation" = ["relu", "gelu"]\n"train.seed" = [1, 2]')
    res = sweep.run(sweep.load_sweep(path=p))
    assert res.complete and res.trained == 4
    _, runs = child_runs(tmp_path)
    check_record(_study(tmp_path), runs)
    study = _study(tmp_path)
    assert study.user_attrs["nanoact.experiment"] == "tiny" and study.user_attrs["nanoact.description"] == "test sweep"
    assert study.metric_names == ["final val loss"] and len(study.trials) == 4
    client = MlflowClient(uri(tmp_path))
    for t in study.trials:  # learning curves for optuna-dashboard: val loss at every eval step
        (run,) = [r for r in runs if r.data.tags["optuna.trial_number"] == str(t.number)]
        curve = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/loss")}
        assert t.intermediate_values == curve and sorted(curve) == [0, 5, 10]
    # the counts are this call's work; the states are the grid's
    again = sweep.run(sweep.load_sweep(path=p))
    assert again.trained == 0 and again.complete and again.exit_code == 0


def _sweep_cmd(p: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nanoact.cli", "sweep", "--file", str(p), *extra]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["popped", "finished"])
def test_kill_at_a_stage_then_one_rerun_settles_the_grid(tmp_path, stage):
    """kill -9 just after a trial is popped, or after its run FINISHED but before the trial is COMPLETE."""
    p = write_sweep(tmp_path, iters=10, grid='"model.activation" = ["relu", "gelu", "swish"]\n"train.seed" = [1]')
    log = tmp_path / "train.log"
    r = subprocess.run(_sweep_cmd(p, "--plugin", "kill_plugin", "--train-log", str(log)), cwd=tmp_path,
                       env=_env(NANOACT_KILL_AT=stage, NANOACT_KILL_AFTER="1"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    study = _study(tmp_path)
    (dead,) = study.get_trials(states=(TrialState.RUNNING,))  # left behind by the kill
    r = subprocess.run(_sweep_cmd(p, "--train-log", str(log)), cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = assert_settled(tmp_path, p)
    trained = [line.split("\t")[0] for line in log.read_text().splitlines()]
    key = dead.user_attrs[S.A_GRID_KEY]
    after = _study(tmp_path).trials[dead.number]
    if stage == "finished":  # adopted, not retrained: one run, trained once
        assert "adopted" in r.stdout + r.stderr and after.state == TrialState.COMPLETE and after.user_attrs[S.A_ADOPTED]
        assert trained.count(key) == 1 and len(runs) == 3
    else:  # never trained; its trial is settled as interrupted and the cell trained once by the rerun
        assert after.state == TrialState.FAIL and after.user_attrs[S.A_INTERRUPTED]
        assert trained.count(key) == 1 and len(runs) == 3
    assert sorted(set(trained)) == sorted(c.key for c in sweep.load_sweep(path=p).cells())


@pytest.mark.slow
def test_a_store_that_fills_mid_cell_stops_the_sweep_and_a_rerun_leaves_nothing_running(tmp_path):
    """The worker cannot end its run on a full store; the rerun (space freed) KILLs that run and retrains."""
    p = write_sweep(tmp_path, iters=10, grid='"model.activation" = ["relu", "gelu", "swish"]\n"train.seed" = [1]')
    r = subprocess.run(_sweep_cmd(p, "--plugin", "kill_plugin"), cwd=tmp_path, capture_output=True, text=True,
                       env=_env(NANOACT_KILL_AT="full", NANOACT_KILL_AFTER="1"), timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "is full" in errors[0], r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    _, runs = child_runs(tmp_path)
    (stuck,) = [x for x in runs if x.info.status == "RUNNING"]  # what a full store leaves behind
    assert len([x for x in runs if x.info.status == "FINISHED"]) == 1  # the finished cell is kept
    r = subprocess.run(_sweep_cmd(p), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"run {stuck.info.run_id}" in r.stdout + r.stderr, r.stdout + r.stderr
    runs = assert_settled(tmp_path, p)
    (killed,) = [x for x in runs if x.info.run_id == stuck.info.run_id]
    assert killed.info.status == "KILLED" and "store was full" in killed.data.tags["nanoact.error"]
    assert len(runs) == 4


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


@pytest.mark.slow
def test_sweep_as_pid_1_in_a_pid_namespace_killed_mid_cell(tmp_path):
    """As PID 1 of a container; the old host:pid check thought a later PID 1 was the dead worker, alive."""
    if subprocess.run(["unshare", "--fork", "--pid", "--mount-proc", "true"], capture_output=True).returncode:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("unshare --pid is not permitted here")
        pytest.skip("unshare --pid is not permitted here")
    p = write_sweep(tmp_path, iters=300)
    log = tmp_path / "train.log"
    ns = ["unshare", "--fork", "--pid", "--mount-proc"]
    outer = subprocess.Popen([*ns, *_sweep_cmd(p, "--train-log", str(log))], cwd=tmp_path, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_lines(log, 2)
        time.sleep(0.5)  # mid-cell
        (pid1,) = _children(outer.pid)  # the sweep, PID 1 inside its namespace
        nspid = Path(f"/proc/{pid1}/status").read_text().split("NSpid:")[1].splitlines()[0].split()
        assert nspid[-1] == "1"  # its PID inside the namespace
        os.kill(pid1, signal.SIGKILL)
        outer.wait(timeout=60)
    finally:
        if outer.poll() is None:
            outer.kill()
    killed = log.read_text().splitlines()[-1].split("\t")[0]
    assert _study(tmp_path).get_trials(states=(TrialState.RUNNING,))
    r = subprocess.run([*ns, *_sweep_cmd(p, "--train-log", str(log))], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=600)  # the rerun is PID 1 too
    assert r.returncode == 0, r.stdout + r.stderr
    runs = assert_settled(tmp_path, p)
    killed_runs = [x for x in runs if x.info.status == "KILLED"]
    assert [x.data.tags["nanoact.grid_key"] for x in killed_runs] == [killed]
    assert "worker died" in killed_runs[0].data.tags["nanoact.error"]


@pytest.mark.slow
def test_two_commands_at_once_on_a_fresh_store(tmp_path):
    """Two experiments set up at once on a fresh folder (MLflow schema, Optuna journal, parent runs)."""
    a = write_sweep(tmp_path, name="exp-a", grid='"train.seed" = [1, 2]')
    b = write_sweep(tmp_path, name="exp-b", grid='"train.seed" = [1, 2]')
    for attempt in range(2):
        cwd = tmp_path / f"fresh{attempt}"
        cwd.mkdir()
        procs = [subprocess.Popen(_sweep_cmd(f, "--init"), cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for f in (a, b)]
        outs = [pr.communicate(timeout=300)[0] for pr in procs]
        for pr, out in zip(procs, outs):
            assert pr.returncode == 0 and "Traceback" not in out, out
            assert "2 cell(s) enqueued" in out, out
        client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
        assert {e.name for e in client.search_experiments()} >= {"exp-a", "exp-b"}


@pytest.mark.slow
def test_result_counts_this_calls_work_with_several_workers(tmp_path):
    p = write_sweep(tmp_path, iters=10, grid='"train.seed" = [1, 2, 3]')
    first = sweep.run(sweep.load_sweep(path=p), sweep.SweepOptions(workers=2))
    assert first.trained == 3 and first.complete
    again = sweep.run(sweep.load_sweep(path=p), sweep.SweepOptions(workers=2))
    assert again.trained == 0 and again.complete


def test_cells_queued_by_a_stopped_call_count_as_to_run(tmp_path):
    """A sweep stopped after enqueueing its grid leaves WAITING trials; the next call's plan line and a dry run
    count them as to run (the plan once said "1 to run" with 23 of 50 cells still queued)."""
    p = write_sweep(tmp_path, iters=5, grid='"train.seed" = [1, 2, 3]')
    spec = sweep.load_sweep(path=p)
    assert len(sweep.run(spec, sweep.SweepOptions(init_only=True)).planned) == 3
    dry = sweep.run(spec, sweep.SweepOptions(dry_run=True))
    assert len(dry.planned) == 3 and dry.count(S.CellStatus.WAITING) == 3
    events = []
    res = sweep.run(spec, sweep.SweepOptions(), events.append)
    (plan,) = [e for e in events if isinstance(e, Planned)]
    assert (plan.done, plan.todo, plan.running) == (0, 3, 0)
    assert res.trained == 3 and res.complete
