"""A sweep as a Slurm job array, on a real Slurm (munge + slurmctld + slurmd on this machine, tests/slurm_cluster.py).

Follows examples/slurm/README.md's shared-filesystem set-up from a fresh folder: ``nanoact server`` there (the
"login node"), ``NANOACT_STORAGE`` = a journal file in that folder, ``MLFLOW_TRACKING_URI`` = the server, and
``sbatch --array=0-1 examples/slurm/sweep.sbatch`` (copied into the folder) with the smoke experiment, one core
per task. Skips when Slurm or munge is not installed (or not root), except under ``CI=true``, where that is a
failure; ``.ci/run`` installs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from conftest import SHARED_CORPUS
from mlflow import MlflowClient
from services import nanoact_server
from slurm_cluster import LocalSlurm, missing

from nanoact import server, sweep
from nanoact.sweep import state as S

REPO = Path(__file__).resolve().parents[1]
SMOKE = [f"--set={kv}" for kv in ("train.max_iters=40", "train.lr_decay_iters=40", "train.eval_interval=20",
                                   "eval.n_contexts=128")]  # the smoke experiment, a few seconds a cell


def _require_slurm() -> None:
    why = None
    if missing():
        why = (f"Slurm/munge not installed (missing {', '.join(missing())}; apt-get install slurmctld slurmd "
               "slurm-client munge)")
    elif os.geteuid() != 0:
        why = "the test Slurm cluster runs its daemons as root"
    if why and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {why}")
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def slurm():
    _require_slurm()
    root = tempfile.mkdtemp(prefix="nanoact-slurm-")
    cluster = LocalSlurm(root)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def site(slurm, tmp_path_factory):
    """The README's shared-filesystem set-up in a fresh folder: sweep.sbatch copied in, `nanoact server` running
    there (its SQLite store and artifacts in ./mlruns), and the environment the README exports."""
    d = tmp_path_factory.mktemp("slurm-site")
    shutil.copy(REPO / "examples" / "slurm" / "sweep.sbatch", d)
    port = server.free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "NANOACT_STORAGE")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the README: nanoact on PATH
    if "NANOACT_DATA_DIR" not in env and SHARED_CORPUS.exists():
        env["NANOACT_DATA_DIR"] = str(SHARED_CORPUS.parent)
    url = f"http://127.0.0.1:{port}"
    with nanoact_server(["nanoact", "server", "--port", str(port), "--workers", "1"], d, env, d / "server.log"):
        env.update(NANOACT_STORAGE=str(d / "queue" / "optuna-journal.log"), MLFLOW_TRACKING_URI=url)
        yield d, env, url


def _submit(slurm: LocalSlurm, site, *args: str) -> str:
    d, env, _ = site
    out = slurm.run("sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", "sweep.sbatch", *args, cwd=d,
                    env=env)
    return out.strip().split(";")[0]


def _exit_codes(slurm: LocalSlurm, job: str) -> dict[str, str]:
    """{task id: 'State ExitCode'} from `scontrol show job` (kept MinJobAge after the end)."""
    found, task = {}, None
    for word in slurm.job_info(job).split():
        if word.startswith("ArrayTaskId="):
            task = word.split("=", 1)[1]
        elif word.startswith("JobState=") and task is not None:
            found[task] = word.split("=", 1)[1]
        elif word.startswith("ExitCode=") and task is not None:
            found[task] += " " + word.split("=", 1)[1]
    return found


def _runs(url: str, study: str):
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("smoke")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.nanoact.role = 'cell' and tags.`nanoact.study` = '{study}'",
                              max_results=1000)


def _logs(site) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(site[0].glob("nanoact-*.out")))


def _cells() -> list[str]:
    return sorted(c.key for c in sweep.load_sweep("smoke").cells())


@pytest.mark.slow
def test_a_job_array_trains_every_cell_once_and_tags_its_runs(slurm, site):
    d, env, url = site
    job = _submit(slurm, site, *SMOKE)
    slurm.wait_job(job, timeout=600)
    states = _exit_codes(slurm, job)
    assert states == {"0": "COMPLETED 0:0", "1": "COMPLETED 0:0"}, (states, _logs(site))
    runs = _runs(url, "smoke")
    assert sorted(r.data.tags["nanoact.grid_key"] for r in runs) == _cells()  # exactly one run per cell
    assert {r.info.status for r in runs} == {"FINISHED"}
    tags = {(r.data.tags["slurm.array_job_id"], r.data.tags["slurm.array_task_id"]) for r in runs}
    assert tags == {(job, "0"), (job, "1")}, _logs(site)  # both tasks trained, each run names its task
    task_jobs = {r.data.tags["slurm.array_task_id"]: r.data.tags["slurm.job_id"] for r in runs}
    assert len(set(task_jobs.values())) == 2 and all(j.isdigit() for j in task_jobs.values())
    # the README: `nanoact status` from the login node, with the same environment
    st = subprocess.run(["nanoact", "status", "--experiment", "smoke"], cwd=d, env=env, capture_output=True,
                        text=True, timeout=120)
    assert st.returncode == 0 and "6/6 cells done" in st.stdout, st.stdout + st.stderr


@pytest.mark.slow
def test_a_task_cancelled_mid_cell_ends_it_as_interrupted_and_the_cell_runs_once_more(slurm, site):
    d, env, url = site
    study = "slurm-cancel"
    job = _submit(slurm, site, "--study", study, *SMOKE)
    t0, victim = time.monotonic(), None
    while victim is None:  # task 1 mid-cell: its MLflow run exists and is RUNNING
        assert time.monotonic() - t0 < 300, "task 1 never started a cell: " + _logs(site)
        running = [r for r in _runs(url, study) if r.info.status == "RUNNING"
                   and r.data.tags.get("slurm.array_task_id") == "1"]
        victim = running[0] if running else None
        time.sleep(0.3)
    slurm.run("scancel", f"{job}_1")  # SIGTERM (then SIGKILL after KillWait = 30 s)
    slurm.wait_job(job, timeout=600)
    out1 = next(d.glob(f"nanoact-{job}_1.out")).read_text()
    assert "interrupted (SIGTERM)" in out1 and "Traceback" not in out1, out1  # ended cleanly, not SIGKILLed
    killed = MlflowClient(url).get_run(victim.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["nanoact.error"] == "interrupted (SIGTERM)"
    # resubmitted, as after a preemption: the same command
    again = _submit(slurm, site, "--study", study, *SMOKE)
    slurm.wait_job(again, timeout=600)
    assert _exit_codes(slurm, again) == {"0": "COMPLETED 0:0", "1": "COMPLETED 0:0"}, _logs(site)
    runs = _runs(url, study)
    finished = sorted(r.data.tags["nanoact.grid_key"] for r in runs if r.info.status == "FINISHED")
    assert finished == _cells(), _logs(site)  # exactly one FINISHED run per cell
    others = [(r.info.run_id, r.info.status) for r in runs if r.info.status != "FINISHED"]
    assert others == [(victim.info.run_id, "KILLED")]  # the one interrupted attempt, retried once
    key = victim.data.tags["nanoact.grid_key"]
    trials = optuna.load_study(study_name=study, storage=sweep.open_storage(env["NANOACT_STORAGE"])).trials
    attempts = [t for t in trials if t.user_attrs.get(S.A_GRID_KEY) == key]
    assert [(t.state.name, t.user_attrs.get(S.A_ERROR)) for t in attempts] == [
        ("FAIL", "interrupted (SIGTERM)"), ("COMPLETE", None)]
    assert attempts[0].user_attrs[S.A_INTERRUPTED] is True
    assert {s.state for s in sweep.cell_states(sweep.load_sweep("smoke").with_study(study), trials)} == {"done"}
