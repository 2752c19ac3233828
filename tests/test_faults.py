"""Faults that once cost a grid (issue 18), each reproduced through the CLI in a subprocess: a torn Optuna
journal, a half-created study, an orphaned parent run, a stalled coordinator, a deleted lease folder, absurd
inputs. Names carry journal / lease / coordinator / restart so that ``pytest -k`` selects them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from test_sweep import _wait_for_lines, child_runs, uri, write_sweep
from test_sweep_engine import _env, _study, _sweep_cmd, assert_settled

from nanoact import sweep

JOURNAL = Path("mlruns") / "optuna-journal.log"


def _cli(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanoact.cli", *args], cwd=tmp_path, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def _errors(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


def _finished_store(tmp_path: Path, grid: str = '"train.seed" = [1, 2]') -> Path:
    p = write_sweep(tmp_path, iters=4, grid=grid)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the default storage and store are under the working directory
    try:
        assert sweep.run(sweep.load_sweep(path=p)).complete
    finally:
        os.chdir(cwd)
    return p


def test_torn_journal_tail_is_cut_on_open_and_the_sweep_goes_on(tmp_path):
    """`truncate -s -60` on the journal of a finished grid: the next sweep cuts the unfinished line with one notice
    (it once glued its next append onto it, and every later command died in a JSONDecodeError)."""
    p = _finished_store(tmp_path)
    journal = tmp_path / JOURNAL
    subprocess.run(["truncate", "-s", "-60", str(journal)], check=True)
    r = subprocess.run(_sweep_cmd(p), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out, out
    (notice,) = [line for line in r.stderr.splitlines() if "repaired the Optuna journal" in line]
    assert str(journal) in notice and "unfinished last line" in notice
    assert journal.read_bytes().endswith(b"\n")
    for args in (("status", "--file", str(p)), ("sweep", "--file", str(p))):  # and it stays readable
        r = _cli(tmp_path, *args)
        assert r.returncode == 0 and "Traceback" not in r.stderr and "repaired" not in r.stderr, r.stdout + r.stderr
    assert_settled(tmp_path, p)


def test_journal_with_an_append_glued_onto_a_torn_line_is_mended(tmp_path):
    """What an older nanoact (or Optuna alone) left: a whole record appended onto an unfinished one."""
    p = _finished_store(tmp_path)
    journal = tmp_path / JOURNAL
    lines = journal.read_bytes().split(b"\n")[:-1]
    glued = lines[-1][:40] + lines[-1]  # a torn copy of the last record, then the record itself
    journal.write_bytes(b"".join(line + b"\n" for line in lines[:-1]) + glued + b"\n")
    r = _cli(tmp_path, "status", "--file", str(p))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert f"cut 40 bytes at the start of line {len(lines)}" in r.stderr
    assert "2/2 cells done" in r.stdout
    assert journal.read_bytes() == b"".join(line + b"\n" for line in lines)


def test_journal_line_that_cannot_be_mended_is_one_error_naming_file_and_line(tmp_path):
    p = _finished_store(tmp_path)
    journal = tmp_path / JOURNAL
    lines = journal.read_bytes().split(b"\n")
    lines[3] = lines[3][:-1]  # its closing brace lost: no record, and no whole one after it
    journal.write_bytes(b"\n".join(lines))
    before = journal.read_bytes()
    for cmd in ("status", "sweep"):
        r = _cli(tmp_path, cmd, "--file", str(p))
        (err,) = _errors(r)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert f"{journal} is corrupt at line 4" in err
    assert journal.read_bytes() == before  # left as it was


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_full_disk_under_the_journal_names_the_journal_and_a_rerun_repairs_it(tmp_path):
    """A real full disk (a tmpfs of 8 KiB as --storage) where mount is permitted, else the same failure simulated
    (an append writes half its bytes, then ENOSPC). The error names the journal, not mlflow.db; the rerun with
    space freed cuts the torn line and finishes the grid."""
    p = write_sweep(tmp_path, iters=4, grid='"model.activation" = ["relu", "gelu", "swish"]\n"train.seed" = [1, 2]')
    disk = tmp_path / "disk"
    real = _mount_tmpfs(disk, "8k")
    journal = disk / "j.log"
    try:
        args = ["--storage", str(journal)]
        fault = [] if real else ["--plugin", "kill_plugin"]
        r = subprocess.run(_sweep_cmd(p, *args, *fault), cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env=_env(NANOACT_KILL_AT="journal_full", NANOACT_KILL_AFTER="30"))
        (err,) = _errors(r)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert str(journal) in err and "full disk" in err and "mlflow.db" not in err
        assert not journal.read_bytes().endswith(b"\n")  # the torn line the full disk left
        if real:
            subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)  # space freed
        r = subprocess.run(_sweep_cmd(p, *args), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert "repaired the Optuna journal" in r.stderr
        assert sweep.status(sweep.load_sweep(path=p), str(journal))[0].state == sweep.CellStatus.DONE
        assert all(s.state == sweep.CellStatus.DONE for s in sweep.status(sweep.load_sweep(path=p), str(journal)))
    finally:
        if real:
            subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.slow
def test_deleted_lease_folder_keeps_a_live_worker_exclusive(tmp_path):
    """`rm -rf` of the lease folder mid-cell: the training worker takes its lease again on a new lock file, so a
    second sweep neither declares it dead (it once KILLed its run and trained the cell twice) nor crashes; the
    first sweep finishes without a FileNotFoundError."""
    p = write_sweep(tmp_path, iters=400, grid='"train.seed" = [1, 2]')
    log = tmp_path / "train.log"
    first = subprocess.Popen(_sweep_cmd(p, "--train-log", str(log)), cwd=tmp_path, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lines(log, 1)
        time.sleep(1.0)  # mid-cell
        leases = tmp_path / "mlruns" / "optuna-journal.log.leases"
        assert leases.is_dir()
        shutil.rmtree(leases)
        time.sleep(1.5)  # the worker's next lease check
        second = subprocess.run(_sweep_cmd(p, "--train-log", str(log)), cwd=tmp_path, env=_env(),
                                capture_output=True, text=True, timeout=600)
        out1, err1 = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    for r, out in ((second, second.stdout + second.stderr), (first, out1 + err1)):
        assert r.returncode == 0 and "Traceback" not in out and "worker died" not in out, out
    trained = [line.split("\t")[0] for line in log.read_text().splitlines()]
    assert sorted(trained) == sorted(c.key for c in sweep.load_sweep(path=p).cells())  # each cell once
    _, runs = child_runs(tmp_path)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]


@pytest.mark.slow
def test_study_half_created_by_a_killed_coordinator_is_completed_before_use(tmp_path):
    """kill -9 between create_study and its attrs: the next coordinator step completes the study (its fingerprint
    among the attrs), so a later changed grid or --set is refused (it was accepted, and then Optuna's
    "CategoricalDistribution does not support dynamic value space" left a trial RUNNING)."""
    p = write_sweep(tmp_path, iters=4, grid='"train.seed" = [1, 2]')
    r = subprocess.run(_sweep_cmd(p, "--init", "--plugin", "kill_plugin"), cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=_env(NANOACT_KILL_AT="created"))
    assert r.returncode == -9, r.stdout + r.stderr
    assert "nanoact.fingerprint" not in _study(tmp_path).user_attrs  # half-created
    r = subprocess.run(_sweep_cmd(p, "--init"), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "2 cell(s) enqueued" in r.stdout, r.stdout + r.stderr
    assert _study(tmp_path).user_attrs["nanoact.fingerprint"] == sweep.load_sweep(path=p).fingerprint()
    r = subprocess.run(_sweep_cmd(p, "--set", "train.lr=1e-2"), cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=300)
    (err,) = _errors(r)
    assert r.returncode == 2 and "different config or grid" in err and "Traceback" not in r.stderr



@pytest.mark.slow
def test_parent_run_orphaned_by_a_killed_coordinator_is_adopted(tmp_path):
    """kill -9 between creating the parent run and recording it in the study: the next coordinator step finds
    that run by the study's nonce and adopts it (a second `sweep-NAME` parent once stayed RUNNING for ever)."""
    p = write_sweep(tmp_path, iters=4, grid='"train.seed" = [1, 2]')
    r = subprocess.run(_sweep_cmd(p, "--plugin", "kill_plugin"), cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=_env(NANOACT_KILL_AT="parent"))
    assert r.returncode == -9, r.stdout + r.stderr
    c = MlflowClient(uri(tmp_path))
    exp = c.get_experiment_by_name("tiny")
    (orphan,) = c.search_runs([exp.experiment_id], "tags.nanoact.role = 'parent'")
    r = subprocess.run(_sweep_cmd(p), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_settled(tmp_path, p)  # one parent run, FINISHED
    (parent,) = c.search_runs([exp.experiment_id], "tags.nanoact.role = 'parent'")
    assert parent.info.run_id == orphan.info.run_id == _study(tmp_path).user_attrs["mlflow_parent_run_id"]


@pytest.mark.slow
def test_ctrl_c_ends_the_parent_run_the_coordinator_made_with_cells_still_queued(tmp_path):
    """SIGINT mid-cell with cells still queued: the parent run is KILLED, not left RUNNING until the next sweep."""
    p = write_sweep(tmp_path, iters=3000, grid='"train.seed" = [1, 2, 3]')
    log = tmp_path / "train.log"
    proc = subprocess.Popen(_sweep_cmd(p, "--train-log", str(log)), cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_lines(log, 1)
        time.sleep(5.0)  # training (not importing torch's lazy modules, which a KeyboardInterrupt breaks)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in out, out
    c = MlflowClient(uri(tmp_path))
    exp = c.get_experiment_by_name("tiny")
    (parent,) = c.search_runs([exp.experiment_id], "tags.nanoact.role = 'parent'")
    assert parent.info.status == "KILLED"
    assert _study(tmp_path).get_trials(states=(TrialState.WAITING,))  # the rest is still queued for the next call


def _hold_coordinator_lease(tmp_path: Path) -> subprocess.Popen:
    """A process that takes the study's coordinator lease and is then stopped (SIGSTOP), as a suspended laptop or
    a worker frozen inside a coordinator step would be."""
    code = ("import sys, time; from nanoact.sweep.leases import open_leases; "
            "from nanoact.sweep.recovery import COORDINATOR; "
            f"l = open_leases({str(tmp_path / JOURNAL)!r}, 'tiny').try_hold(COORDINATOR); "
            "print(l is not None, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "True"
    proc.send_signal(signal.SIGSTOP)
    return proc


@pytest.mark.slow
def test_stopped_coordinator_lease_holder_stalls_no_worker(tmp_path):
    """A stopped process holds the coordinator lease with 3 cells queued: a new sweep once waited for ever ("another
    nanoact process is setting up study ..."). Now it waits a bounded time, says who holds the lease, and trains
    the queued cells; `status` shows the holder and the queued cells nobody takes."""
    p = write_sweep(tmp_path, iters=4, grid='"train.seed" = [1, 2, 3]')
    r = subprocess.run(_sweep_cmd(p, "--init"), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    holder = _hold_coordinator_lease(tmp_path)
    try:
        r = _cli(tmp_path, "status", "--file", str(p))
        assert f"coordinator lease (study set-up, enqueueing) is held by pid {holder.pid}" in r.stdout, r.stdout
        assert "3 cell(s) queued and none running: no worker is taking them" in r.stdout
        r = subprocess.run(_sweep_cmd(p, "--plugin", "kill_plugin"), cwd=tmp_path, capture_output=True, text=True,
                           env=_env(NANOACT_COORDINATOR_WAIT_S="3"), timeout=240)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "Traceback" not in out, out
        assert f"held by pid {holder.pid}" in out and "training the cells already queued" in out
        assert all(s.state == sweep.CellStatus.DONE for s in sweep.status(sweep.load_sweep(path=p)))
    finally:
        holder.kill()
        holder.wait()


def test_stopped_coordinator_lease_holder_on_a_new_study_is_one_error(tmp_path):
    """No study yet and the lease held: one `error:` line naming the holder after the bounded wait."""
    p = write_sweep(tmp_path, iters=4, grid='"train.seed" = [1]')
    (tmp_path / JOURNAL).parent.mkdir()
    holder = _hold_coordinator_lease(tmp_path)
    try:
        r = subprocess.run(_sweep_cmd(p, "--plugin", "kill_plugin"), cwd=tmp_path, capture_output=True, text=True,
                           env=_env(NANOACT_COORDINATOR_WAIT_S="2"), timeout=240)
        (err,) = _errors(r)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert f"held for over 2 s by pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()


def _sweep_in_process(tmp_path: Path, monkeypatch, p: Path, *args: str):
    """``nanoact sweep --file P ARGS`` run in this process from ``tmp_path``: (exit code, its ``error:`` lines)."""
    from click.testing import CliRunner

    from nanoact.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = CliRunner().invoke(cli, ["sweep", "--file", str(p), *args])
    assert "Traceback" not in r.output, r.output
    return r.exit_code, [line for line in r.stderr.splitlines() if line.startswith("error:")]


def test_workers_above_the_cores_are_refused_unless_oversubscribed(tmp_path, monkeypatch):
    """`--workers 1000` (a typo for 10) once started 1,000 torch processes: refused before anything is created."""
    p = write_sweep(tmp_path, iters=4, grid='"train.seed" = [1]')
    n = (os.cpu_count() or 1) + 1
    code, (err,) = _sweep_in_process(tmp_path, monkeypatch, p, "--workers", str(n))
    assert code == 2 and f"--workers {n} is more than the" in err and "--oversubscribe" in err
    assert not (tmp_path / "mlruns").exists()  # nothing created


@pytest.mark.slow
def test_workers_are_capped_at_the_cells_left_to_run(tmp_path):
    """`--workers 8` on 6 cells once started 8 torch processes; with --oversubscribe and one cell left, one runs."""
    p = write_sweep(tmp_path, iters=4, grid='"train.seed" = [1, 2]')
    log = tmp_path / "train.log"
    r = subprocess.run(_sweep_cmd(p, "--init"), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    n = (os.cpu_count() or 1) + 2
    r = subprocess.run(_sweep_cmd(p, "--workers", str(n), "--oversubscribe", "--train-log", str(log)), cwd=tmp_path,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"starting 2 worker(s), not {n}: only 2 cell(s) to run" in r.stdout + r.stderr
    assert len({line.split("\t")[2] for line in log.read_text().splitlines()}) <= 2


@pytest.mark.parametrize("bad, words", [
    (("--set", "model.n_layer=100000"), "model.n_layer must be <= 4096"),
    (("--set", "model.n_embd=100000"), "model.n_layer * model.n_embd**2"),
    (("--set", "eval.seed=99999999999999999999"), "eval.seed must be in [0, 4294967295]"),
    ((), "train.seed must be in [0, 4294967295]"),  # in the grid
])
def test_seeds_and_model_sizes_out_of_range_are_refused_before_any_run(tmp_path, monkeypatch, bad, words):
    """`train.seed = 99999999999999999999` passed --dry-run and failed at training time as a FAILED run
    ("Overflow when unpacking long long"); so did `n_layer = 100000`. Now config validation refuses them."""
    grid = '"train.seed" = [99999999999999999999]' if not bad else '"train.seed" = [1]'
    p = write_sweep(tmp_path, iters=4, grid=grid)
    for extra in (["--dry-run"], []):
        code, (err,) = _sweep_in_process(tmp_path, monkeypatch, p, *bad, *extra)
        assert code == 2 and words in err, err
    assert not (tmp_path / "mlruns").exists()  # no study, no run


def test_train_with_a_corpus_error_creates_no_run(tmp_path):
    """`nanoact train` offline failed on the corpus but left a FAILED run in MLflow: a data error found before
    training is one `error:` line, and no store or run is created."""
    r = _cli(tmp_path, "train", "--set", f"data.corpus={tmp_path / 'missing.txt'}", "--set", "train.max_iters=2")
    (err,) = _errors(r)
    assert r.returncode == 2 and "missing.txt" in err and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "mlruns").exists()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("cmd, sig", [("ui", signal.SIGHUP), ("ui", signal.SIGTERM), ("server", signal.SIGHUP)])
def test_ui_and_server_end_their_process_group_on_hangup_and_term(tmp_path, cmd, sig):
    """Closing the terminal (SIGHUP) or `kill` (SIGTERM) once left `mlflow server` and its uvicorn child on the
    port, and the next `nanoact ui` said only "port already in use". Now the port error names the PID, and the
    signal stops the whole server process group."""
    from nanoact.server import check_port_free, free_port

    port = free_port()
    if cmd == "ui":  # `ui` reads an existing store and never creates one
        from mlflow import MlflowClient

        (tmp_path / "mlruns").mkdir()
        MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").search_experiments()
    proc = subprocess.Popen([sys.executable, "-m", "nanoact.cli", cmd, "--port", str(port)], cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        t0 = time.monotonic()
        while "ready" not in (line := proc.stdout.readline()):
            assert line and time.monotonic() - t0 < 180, "never ready"
        second = _cli(tmp_path, "ui", "--port", str(port), timeout=60)
        (err,) = _errors(second)
        holders = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                   and "mlflow" in (p / "cmdline").read_bytes().decode(errors="replace")
                   and str(port) in (p / "cmdline").read_bytes().decode(errors="replace")]
        pgid = os.getpgid(min(holders))  # the server's own session and group
        assert "already in use by pid " in err and f"process group {pgid}; stop it (`kill -- -{pgid}`)" in err, err
        proc.send_signal(sig)
        proc.wait(timeout=60)
        t0 = time.monotonic()
        while _group_alive(pgid) and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        assert not _group_alive(pgid), "the mlflow server's process group outlived nanoact"
        check_port_free("127.0.0.1", port)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_absurd_grid_is_refused_with_its_count_unless_insisted(tmp_path):
    """A 10^6-cell grid was accepted, and --dry-run was still printing after 6 min 40 s. Above 10,000 cells the
    count comes first and the sweep needs --large-grid; a dry run lists the first 1,000 cells and counts the rest."""
    grid = f'"train.seed" = {list(range(101))}\n"train.lr" = {[round(1e-3 + i * 1e-5, 6) for i in range(100)]}'
    p = write_sweep(tmp_path, iters=4, grid=grid)
    r = subprocess.run(_sweep_cmd(p, "--dry-run"), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    (err,) = _errors(r)
    assert r.returncode == 2 and "10,100 cells (101 train.seed x 100 train.lr), more than 10,000" in err, r.stderr
    assert "--large-grid" in err
    r = subprocess.run(_sweep_cmd(p, "--dry-run", "--large-grid"), cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("10,100 cells (") and "... and 9,100 more cells" in r.stdout
    assert sum(line.startswith("  ") and line.endswith("would run") for line in lines) == 1000
    assert not (tmp_path / "mlruns").exists()


@pytest.fixture
def restartable_pg():
    """A PostgreSQL cluster of its own (the tests stop it with `pg_ctl stop -m immediate`), database `optuna`."""
    from services import PW, postgres

    with postgres(["optuna"]) as cluster:
        cluster.storage = cluster.url("nanoact", PW, "optuna")
        yield cluster


def _crash(cluster) -> None:
    cluster._run([cluster.pg_ctl, "-D", str(cluster.data), "-m", "immediate", "-w", "stop"])


@pytest.mark.slow
def test_postgres_restart_mid_sweep_workers_reconnect_and_go_on(tmp_path, restartable_pg):
    """`pg_ctl stop -m immediate` mid-cell, back 5 s later: the worker says it lost the connection, reconnects and
    finishes the grid (it died in a 315-line traceback ending in Optuna's "exceeding max length")."""
    p = write_sweep(tmp_path, iters=300, grid='"train.seed" = [1, 2, 3]')
    log = tmp_path / "train.log"
    proc = subprocess.Popen(_sweep_cmd(p, "--storage", restartable_pg.storage, "--train-log", str(log)),
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lines(log, 1)
        time.sleep(1.0)
        _crash(restartable_pg)
        time.sleep(5.0)
        restartable_pg.start()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, out + err
    assert "lost the connection to the Optuna storage" in err and "reconnected to the Optuna storage" in err
    states = sweep.status(sweep.load_sweep(path=p), restartable_pg.storage)
    assert all(s.state == sweep.CellStatus.DONE for s in states), states


@pytest.mark.slow
def test_postgres_restart_beyond_the_grace_is_one_error_and_the_rerun_says_what_it_did(tmp_path, restartable_pg):
    """The database stays away longer than the grace period (shortened to 3 s here): one `error:` line, exit 2.
    The rerun with the database back settles the dead trial and finishes, and does not call a FAILED run
    KILLED (it once printed "run ... KILLED" for runs that stayed FAILED)."""
    p = write_sweep(tmp_path, iters=300, grid='"train.seed" = [1, 2]')
    log = tmp_path / "train.log"
    proc = subprocess.Popen(_sweep_cmd(p, "--storage", restartable_pg.storage, "--train-log", str(log), "--plugin",
                                       "kill_plugin"), cwd=tmp_path, env=_env(NANOACT_RECONNECT_S="3"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lines(log, 1)
        time.sleep(1.0)
        _crash(restartable_pg)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in err, out + err
    assert "unreachable for over 3 s" in errors[0] and "run the same command again" in errors[0]
    restartable_pg.start()
    r = subprocess.run(_sweep_cmd(p, "--storage", restartable_pg.storage), cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    _, runs = child_runs(tmp_path)
    status = {x.info.run_id: x.info.status for x in runs}
    settled = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("interrupted ")]
    assert settled, r.stdout + r.stderr
    for line in settled:
        run_id = line.split("; run ")[1].split()[0]
        assert line.endswith(f"left {status[run_id]}") if status[run_id] != "KILLED" else line.endswith("KILLED")
    assert sorted(s for s in status.values() if s == "FINISHED") == ["FINISHED", "FINISHED"]
