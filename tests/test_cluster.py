"""Clusters without Slurm: stores unsafe for several hosts (a faked /proc/mounts), Slurm run tags, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from test_sweep import _wait_for_lines, child_runs, write_sweep

from nanoact import cluster, sweep
from nanoact import events as E
from nanoact.cli import cli
from nanoact.errors import ConfigError
from nanoact.sweep import state as S

MOUNTS = r"""overlay / overlay rw,relatime,lowerdir=/a:/b 0 0
tmpfs /tmp tmpfs rw,nosuid 0 0
nfs01:/home /home nfs4 rw,relatime,vers=4.2,hard,proto=tcp,local_lock=none 0 0
nfs02:/old /home/old nfs rw,vers=3,nolock,local_lock=all 0 0
10.0.0.1@o2ib:/scratch /scratch lustre rw,localflock 0 0
10.0.0.1@o2ib:/project /project lustre rw,flock 0 0
//srv/share /mnt/lab\040share cifs rw,vers=3.0 0 0
me@host:/data /mnt/sshfs fuse.sshfs rw,nosuid 0 0
tmpfs /home/old tmpfs rw 0 0
"""
ARRAY = {"SLURM_JOB_ID": "1234", "SLURM_ARRAY_JOB_ID": "1230", "SLURM_ARRAY_TASK_ID": "4", "SLURM_JOB_NUM_NODES": "1"}


def test_the_longest_mount_point_holds_a_path():
    def fs(path):
        return cluster.mount_of(path, MOUNTS).fstype

    assert fs("/home/me/mlruns/optuna-journal.log") == "nfs4"
    assert fs("/homework/x") == "overlay"  # a prefix of the name is not a parent folder
    assert fs("/tmp") == "tmpfs" and fs("/scratch/a/b") == "lustre"
    assert fs("/mnt/lab share/j.log") == "cifs"  # /proc/mounts writes a space as \040
    assert fs("/home/old/x") == "tmpfs"  # mounted later on the same point: hides the NFS mount
    assert cluster.mount_of("/x", "") is None


@pytest.mark.parametrize("path, problem", [
    ("/scratch/j.log", "without the flock option"),
    ("/mnt/lab share/j.log", "SMB/CIFS"),
    ("/mnt/sshfs/j.log", "fuse.sshfs"),
])
def test_a_journal_whose_locks_other_hosts_cannot_see_is_refused_for_a_job_array(tmp_path, path, problem):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    with pytest.raises(ConfigError) as e:
        cluster.check_stores(path, "http://127.0.0.1:5000", env=ARRAY, mounts=mounts)
    msg = str(e.value)
    assert problem in msg and "postgresql+psycopg2" in msg and "array job 1230" in msg and "\n" not in msg, msg
    # one host only: a one-line warning, not a refusal
    [warning] = cluster.check_stores(path, "http://127.0.0.1:5000", env={}, mounts=mounts)
    assert problem in warning and "if workers on other hosts share it" in warning
    # on several nodes, with the explicit override: warned, not refused
    env = {"SLURM_JOB_ID": "9", "SLURM_JOB_NUM_NODES": "2", cluster.ALLOW_UNSAFE: "1"}
    assert "runs on 2 nodes" in cluster.check_stores(path, "http://h:1", env=env, mounts=mounts)[0]


def test_sqlite_on_a_network_filesystem_is_refused_for_several_hosts_and_warned_about_always(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    journal_ok = "/project/j.log"  # lustre mounted with flock: the journal's leases are fine
    with pytest.raises(ConfigError, match=r"MLflow SQLite store /home/me/mlflow.db is on nfs4 .*nanoact server"):
        cluster.check_stores(journal_ok, "sqlite:////home/me/mlflow.db", env=ARRAY, mounts=mounts)
    with pytest.raises(ConfigError, match="Optuna SQLite storage"):
        cluster.check_stores("sqlite:////home/me/optuna.db", "http://h:1", env=ARRAY, mounts=mounts)
    [warning] = cluster.check_stores(journal_ok, "sqlite:////home/me/mlflow.db", env={}, mounts=mounts)
    assert "can be corrupted" in warning
    # NFSv4 locks are shared, local folders and servers are fine: nothing to say
    assert cluster.check_stores("/home/me/j.log", "http://h:1", env=ARRAY, mounts=mounts) == []
    assert cluster.check_stores("/tmp/j.log", "sqlite:////tmp/mlflow.db", env=ARRAY, mounts=mounts) == []
    assert cluster.check_stores("postgresql+psycopg2://u@h/db", "http://h:1", env=ARRAY, mounts=mounts) == []
    assert cluster.check_stores("/scratch/j.log", "http://h:1", env=ARRAY, mounts=tmp_path / "none") == []


def test_nanoact_sweep_refuses_an_unsafe_store_in_one_line(tmp_path, monkeypatch):
    p = write_sweep(tmp_path, grid='"train.seed" = [1]')
    fake = MOUNTS + f"lus@o2ib:/lab {tmp_path} lustre rw,noflock 0 0\n"
    monkeypatch.setattr(cluster, "_read_mounts", lambda mounts: fake)
    for k, v in ARRAY.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(cli, ["sweep", "--file", str(p)])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "the Optuna journal" in r.stderr, r.output
    assert not (tmp_path / "mlruns").exists()  # refused before anything was created


@pytest.mark.slow
def test_nanoact_sweep_warns_about_an_unsafe_store_on_one_host_and_runs(tmp_path, monkeypatch):
    p = write_sweep(tmp_path, grid='"train.seed" = [1]')
    fake = MOUNTS + f"lus@o2ib:/lab {tmp_path} lustre rw,noflock 0 0\n"
    monkeypatch.setattr(cluster, "_read_mounts", lambda mounts: fake)
    for k in ("SLURM_ARRAY_TASK_ID", "SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        monkeypatch.delenv(k, raising=False)
    r = CliRunner().invoke(cli, ["sweep", "--file", str(p)])
    assert r.exit_code == 0, r.output
    assert r.output.count("warning: the Optuna journal") == 1 and "lustre" in r.output


def test_slurm_tags_come_from_the_environment():
    assert cluster.slurm_tags({}) == {}
    assert cluster.slurm_tags({**ARRAY, "SLURMD_NODENAME": "n07", "HOME": "/root"}) == {
        "slurm.job_id": "1234", "slurm.array_job_id": "1230", "slurm.array_task_id": "4", "slurm.node": "n07"}
    assert cluster.multi_host({"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "1"}) is None


@pytest.mark.slow
def test_sigterm_ends_the_cell_as_interrupted_and_runs_record_slurm_ids(tmp_path, monkeypatch):
    for k, v in ARRAY.items():  # an array task (the default stores sit on a local disk here: allowed)
        monkeypatch.setenv(k, v)
    spec = sweep.load_sweep(path=write_sweep(tmp_path, iters=200, grid='"train.seed" = [1, 2]'))
    sent = []

    def events(ev):  # in the worker's (main) thread, mid-cell: as Slurm's scancel or --signal would
        if isinstance(ev, E.CellTraining) and isinstance(ev.event, E.Iterated) and ev.event.iter >= 5 and not sent:
            sent.append(ev)
            os.kill(os.getpid(), signal.SIGTERM)

    res = sweep.run(spec, sweep.SweepOptions(), events)
    assert sent and res.interrupted and res.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the call
    study = optuna.load_study(study_name=spec.study_name, storage=sweep.open_storage(None))
    [trial] = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]  # the other cell waits
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs[S.A_INTERRUPTED] is True
    assert trial.user_attrs[S.A_ERROR] == "interrupted (SIGTERM)"
    client, [run] = child_runs(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["nanoact.error"] == "interrupted (SIGTERM)"
    assert (run.data.tags["slurm.job_id"], run.data.tags["slurm.array_job_id"],
            run.data.tags["slurm.array_task_id"]) == ("1234", "1230", "4")
    res = sweep.run(spec, sweep.SweepOptions(train_log=str(tmp_path / "log")))  # the cell runs again
    assert res.complete and res.trained == 2


@pytest.mark.slow
def test_sigterm_to_the_parent_of_workers_reaches_them(tmp_path):
    p = write_sweep(tmp_path, iters=3000, grid='"train.seed" = [1, 2, 3]')
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "nanoact.cli", "sweep", "--file", str(p), "--workers", "2", "--train-log", str(log)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_lines(log, 2)
        time.sleep(1.0)  # both mid-cell
        proc.send_signal(signal.SIGTERM)  # the parent only, as `kill` or Slurm's --signal=B:TERM does
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    assert "interrupted (SIGTERM)" in out and "Traceback" not in out, out
    study = optuna.load_study(study_name="tiny", storage=sweep.open_storage(None))
    ended = {t.number: (t.state, t.user_attrs.get(S.A_ERROR)) for t in study.trials if t.user_attrs.get(S.A_RUN_ID)}
    assert len(ended) == 2 and set(ended.values()) == {(optuna.trial.TrialState.FAIL, "interrupted (SIGTERM)")}
    _, runs = child_runs(tmp_path)
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"]
    assert {r.data.tags["nanoact.error"] for r in runs} == {"interrupted (SIGTERM)"}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_worker_without_its_gpu_stops_before_taking_a_cell(tmp_path):
    spec = sweep.load_sweep(path=write_sweep(tmp_path, grid='"train.seed" = [1]'))
    with pytest.raises(ConfigError, match=r"^--devices cuda:0: .*CUDA is not available on this machine$"):
        sweep.run(spec, sweep.SweepOptions(devices=("cuda:0",)))
    assert not (tmp_path / "mlruns").exists()  # no study, no run, no failed cell


def test_the_gpu_script_stops_without_an_allocated_gpu(tmp_path):
    script = Path(__file__).resolve().parents[1] / "examples" / "slurm" / "sweep-gpu.sbatch"
    env = {"PATH": os.environ["PATH"], "NANOACT_STORAGE": str(tmp_path / "j.log"), "MLFLOW_TRACKING_URI": "http://h:1"}
    r = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 2 and "no GPU allocated" in r.stderr and not list(tmp_path.iterdir()), r.stderr
    del env["NANOACT_STORAGE"]
    r = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode != 0 and "export NANOACT_STORAGE" in r.stderr, r.stderr
