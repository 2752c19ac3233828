"""Distributed sweeps: workers sharing a study on PostgreSQL and an MLflow tracking server; leases; secrets.

Run: ``python -m pytest tests/test_distributed.py -q``. The slow tests start a real PostgreSQL on 127.0.0.1 (as
the ``postgres`` user when run as root) and a real ``nanoact server`` once per session; they skip when the
PostgreSQL server binaries are missing, except under ``CI=true``, where that is a failure. On PostgreSQL a
cell's lease is an advisory lock (docs/DISTRIBUTED.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from services import PW, nanoact_server, postgres
from test_sweep import write_sweep

from nanoact import events as E
from nanoact import server, sweep, tracking_uri
from nanoact.cli import cli
from nanoact.errors import ConfigError, NanoactError
from nanoact.sweep import state as S
from nanoact.sweep.coordinator import prepare, requeue_lost
from nanoact.sweep.handle import StudyHandle
from nanoact.sweep.leases import open_leases
from nanoact.sweep.worker import Worker

TPW = "Tr-s3cr3t-9Kz"  # a password in the tracking URL (basic auth, ignored by the server)
GRID_12 = '"model.activation" = ["relu", "gelu", "swish"]\n"train.seed" = [1, 2, 3, 4]'


# ----------------------------------------------------------------------------------------------------------
# fast tests: no PostgreSQL, no server


def test_redact_hides_passwords_in_any_form():
    urls = {
        "postgresql+psycopg2://nanoact:s3cr%40t-pw@db.lab:5432/optuna": "s3cr@t-pw",
        "postgresql+psycopg2://u:raw@pass/word@db/x": "raw@pass/word",
        "http://alice:Tr-pw-123@127.0.0.1:5000": "Tr-pw-123",
    }
    for url, pw in urls.items():
        shown = tracking_uri.display_url(url)
        assert pw not in shown and "***" in shown, shown
        msg = tracking_uri.redact(f"FATAL for {url}: password {pw!r} / {pw.replace('@', '%40')}", url)
        assert pw not in msg and pw.replace("@", "%40") not in msg, msg
    assert tracking_uri.display_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert tracking_uri.redact("no secrets here", None, "sqlite:///a.db") == "no secrets here"


def test_server_spec_defaults_to_loopback_and_keeps_the_url_off_the_command_line(tmp_path):
    url = f"postgresql+psycopg2://nanoact:{PW}@127.0.0.1:5432/mlflow"
    spec = server.server_spec(url, port=5123, cwd=tmp_path)
    cmd = spec.command()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--serve-artifacts" in cmd
    assert spec.artifacts_destination == str(tmp_path / "mlruns" / "artifacts")
    assert not any(PW in c or "postgresql" in c for c in cmd)  # `ps` shows argv to every user
    assert spec.env()["MLFLOW_BACKEND_STORE_URI"] == url
    exposed = server.server_spec(url, host="0.0.0.0", allowed_hosts="mlflow.lab", cwd=tmp_path).command()
    assert exposed[exposed.index("--allowed-hosts") + 1] == "mlflow.lab"
    assert server.server_spec(cwd=tmp_path).backend_store_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    with pytest.raises(NanoactError, match=r"postgresql\+psycopg2"):
        server.server_spec("postgresql://u@h/db", cwd=tmp_path)


def test_devices_are_validated_and_one_goes_to_each_worker(tmp_path, monkeypatch):
    assert sweep.check_devices([" cuda:0", "cuda:1 "], 2) == ["cuda:0", "cuda:1"]  # no GPU needed to check
    with pytest.raises(ConfigError, match="2 devices for 3 workers"):
        sweep.check_devices(["cuda:0", "cuda:1"], 3)
    with pytest.raises(ConfigError, match="'gpu0' is not a device"):
        sweep.check_devices(["cuda:0", "gpu0"], 2)
    with pytest.raises(ConfigError, match="'' is not a device"):
        sweep.check_devices(["cuda:0", ""], 2)
    p = write_sweep(tmp_path, grid='"train.seed" = [1, 2]')
    spec = sweep.load_sweep(path=p)
    with pytest.raises(ConfigError, match="one per worker"):
        sweep.SweepOptions(workers=2, devices=("cuda:0",))
    ctx = sweep.WorkerContext(spec, None, "sqlite:///x.db", "1", "p")
    ctxs = sweep.worker_contexts(ctx, 2, ["cuda:0", "cuda:1"], cores=16)
    assert [(c.worker_name, c.device, c.threads) for c in ctxs] == [("w0", "cuda:0", 8), ("w1", "cuda:1", 8)]
    assert [c.threads for c in sweep.worker_contexts(ctx, 3, None, cores=2)] == [1, 1, 1]
    # the worker puts its device into every cell's config (the trainer is faked: no GPU here)
    seen = []

    def fake_train(cfg, **kw):
        seen.append((cfg.train.device, cfg.train.threads))
        return type("R", (), {"metrics": {"final/val_loss": 1.0, "time/wall_s": 0.0}})()

    monkeypatch.setattr("nanoact.trainer.train", fake_train)
    res, wctx = prepare(spec, sweep.SweepOptions(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db"), print)
    wctx = sweep.worker_contexts(wctx, 2, ("cuda:1", "cuda:0"), cores=4)[0]
    assert Worker(wctx).run() == (2, 0)
    assert seen == [("cuda:1", 2), ("cuda:1", 2)]


def test_storage_urls_are_checked():
    with pytest.raises(ConfigError, match=r"postgresql\+psycopg2"):
        sweep.open_storage("postgresql://u@127.0.0.1/db")
    with pytest.raises(ConfigError, match="postgresql\\+psycopg2://... or sqlite:///"):
        sweep.open_storage("mysql://u@127.0.0.1/db")


def test_unreachable_services_are_one_line_errors_without_the_password(tmp_path, monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # the CLI moves URL credentials here
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)  # ...and monkeypatch removes them again after the test
    p = write_sweep(tmp_path, grid='"train.seed" = [1]')
    port = server.free_port()  # nothing listens there
    runner = CliRunner()
    cases = [
        (["--storage", f"postgresql+psycopg2://nanoact:{PW}@127.0.0.1:{port}/optuna"], "cannot open Optuna storage"),
        (["--tracking-uri", f"http://alice:{TPW}@127.0.0.1:{port}"], "cannot reach the MLflow tracking server"),
        (["--storage", f"postgresql+psycopg2://nanoact:{PW}@127.0.0.1:notaport/optuna"], "cannot open Optuna storage"),
    ]
    cases = [(["sweep", "--file", str(p), *args], expected) for args, expected in cases]
    cases.append((["server", "--backend-store-uri", f"postgresql+psycopg2://nanoact:{PW}@127.0.0.1:{port}/mlflow",
                   "--port", str(server.free_port())], "cannot connect to the backend store"))
    for args, expected in cases:
        t0 = time.monotonic()
        r = runner.invoke(cli, args)
        errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
        assert r.exit_code == 2 and len(errors) == 1, r.output
        msg = errors[0]
        assert expected in msg, msg
        assert PW not in msg + r.output and TPW not in msg + r.output, msg
        assert ("***" in msg) == ("--tracking-uri" not in args), msg  # tracking credentials left the URI
        assert time.monotonic() - t0 < 30  # not minutes of retries
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == TPW and os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"


def _fake_trainer(monkeypatch, during=None):
    """Replace the trainer: start and finish a real MLflow run (as the trainer does), call ``during()``."""
    trained = []

    def fake_train(cfg, *, tracker, **kw):
        tracker.start(f"fake-s{cfg.train.seed}", {})
        if during:
            during(cfg)
        tracker.finish("FINISHED")
        trained.append(cfg.train.seed)
        return type("R", (), {"metrics": {"final/val_loss": 1.0, "time/wall_s": 0.0}})()

    monkeypatch.setattr("nanoact.trainer.train", fake_train)
    return trained


def _race_to_recover(storage_url: str, tmp_path: Path, n: int = 6) -> None:
    """A worker popped the only cell and died before taking its lease; ``n`` live workers, each with its own
    storage connection and leases (as on other machines), notice at once: one retry, not ``n``."""
    spec = sweep.SweepSpec("race", sweep.load_sweep(path=write_sweep(tmp_path, grid='"train.seed" = [1]')).base,
                           {"train.seed": [1]})
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    storage = sweep.open_storage(storage_url)
    study = optuna.create_study(study_name="race", storage=storage)
    study.enqueue_trial({"train.seed": 1}, user_attrs={S.A_GRID_KEY: "train.seed=1", S.A_CELL: '{"train.seed": 1}'})
    trial, lease = StudyHandle(study, storage, open_leases(storage_url, "race"), uri).pop(spec.grid)
    lease.release()  # ...and its worker died
    barrier, errors, events = threading.Barrier(n), [], []

    def live_worker():
        try:
            leases = open_leases(storage_url, "race")
            barrier.wait()
            requeue_lost(spec, StudyHandle(study, storage, leases, uri), events.append)
            leases.close()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=live_worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    trials = study.get_trials()
    assert trials[trial.number].state == optuna.trial.TrialState.FAIL
    assert trials[trial.number].user_attrs[S.A_INTERRUPTED] is True
    retries = [t for t in trials if t.user_attrs.get(S.A_RETRY_OF) == trial.number]
    assert [t.state for t in retries] == [optuna.trial.TrialState.WAITING] and len(trials) == 2
    assert [type(e) for e in events] == [E.Recovered]
    assert retries[0].system_attrs["fixed_params"] == {"train.seed": 1}  # the cell, as params once popped


def test_concurrent_live_workers_retry_a_dead_cell_exactly_once(tmp_path):
    _race_to_recover(str(tmp_path / "journal.log"), tmp_path)


def test_idle_worker_takes_over_the_cell_of_a_worker_that_dies(tmp_path, monkeypatch):
    """The queue is empty and the only cell is RUNNING in another process, which holds its lease: a live worker
    waits for it instead of stopping, and when that process is killed, takes the cell over and trains it."""
    p = write_sweep(tmp_path, grid='"train.seed" = [1]')
    spec = sweep.load_sweep(path=p)
    journal = str(tmp_path / "mlruns" / "optuna-journal.log")
    _, ctx = prepare(spec, sweep.SweepOptions(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db"), print)
    code = ("import sys, time; from nanoact.sweep.handle import StudyHandle; "
            f"t, l = StudyHandle.open({journal!r}, 'tiny', {ctx.tracking_uri!r}).pop({{'train.seed': [1]}}); "
            "print(t.number, l is not None, flush=True); time.sleep(120)")
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().split() == ["0", "True"]
        threading.Timer(2.0, other.kill).start()
        trained = _fake_trainer(monkeypatch)
        events = []
        t0 = time.monotonic()
        assert Worker(ctx, events.append, poll_s=0.2).run() == (1, 0)
    finally:
        other.kill()
    assert trained == [1] and time.monotonic() - t0 >= 2.0  # it waited for the live one, then took over
    assert [type(e) for e in events if isinstance(e, (E.Idle, E.Recovered, E.CellDone))] == [
        E.Idle, E.Recovered, E.CellDone]
    study = optuna.load_study(study_name="tiny", storage=sweep.open_storage(journal))
    assert study.trials[0].user_attrs[S.A_INTERRUPTED] is True and study.trials[1].user_attrs[S.A_RETRY_OF] == 0
    (state,) = sweep.cell_states(spec, study.trials)
    assert state.state == sweep.CellStatus.DONE and state.attempts == 2


def test_worker_whose_trial_was_settled_meanwhile_discards_its_run_and_goes_on(tmp_path, monkeypatch):
    """A worker whose trial was settled as dead while it trained (on PostgreSQL: its connection, and so its
    lease, was lost) finishes the cell anyway: its run must not count (the retry's does), and it goes on."""
    p = write_sweep(tmp_path, grid='"train.seed" = [1, 2]')
    spec = sweep.load_sweep(path=p)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    _, ctx = prepare(spec, sweep.SweepOptions(tracking_uri=uri), print)
    storage = sweep.open_storage(str(tmp_path / "mlruns" / "optuna-journal.log"))
    study = optuna.load_study(study_name="tiny", storage=storage)

    def settled_elsewhere(cfg):
        if cfg.train.seed == 1:
            (t,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)

    trained = _fake_trainer(monkeypatch, settled_elsewhere)
    events = []
    assert Worker(ctx, events.append).run() == (1, 0)  # seed 2 trained and counted; seed 1's result discarded
    assert sorted(trained) == [1, 2] and E.CellLost in [type(e) for e in events]
    client = MlflowClient(uri)
    runs = {r.data.tags["nanoact.grid_key"]: r for r in client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.nanoact.role = 'cell'")}
    assert runs["train.seed=1"].info.status == "KILLED" and "settled as dead" in runs["train.seed=1"].data.tags[
        "nanoact.error"]
    assert runs["train.seed=2"].info.status == "FINISHED"

# ----------------------------------------------------------------------------------------------------------
# a real PostgreSQL and a real MLflow server (session-scoped; slow tests)


@pytest.fixture(scope="session")
def pg():
    """PostgreSQL for the session (``services.postgres``), with database ``mlflow``; tests create more."""
    with postgres(["mlflow"]) as cluster:
        yield cluster


class Srv:
    def __init__(self, url: str, log: Path, proc: subprocess.Popen, port: int):
        self.url, self.log, self.proc, self.port = url, log, proc, port


@pytest.fixture(scope="session")
def mlflow_server(pg, tmp_path_factory):
    """``nanoact server`` (a real ``mlflow server``) on the PostgreSQL above, served artifacts in a tmp folder,
    127.0.0.1:<free port>. The backend URL (with its password) reaches it through the environment."""
    d = tmp_path_factory.mktemp("mlflow-server")
    port = server.free_port()
    log = d / "server.log"
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": pg.url("nanoact", PW, "mlflow")}
    env.pop("MLFLOW_TRACKING_URI", None)
    url = f"http://127.0.0.1:{port}"
    with nanoact_server([sys.executable, "-m", "nanoact.cli", "server", "--artifacts-destination",
                         str(d / "artifacts"), "--port", str(port), "--workers", "1"], d, env, log) as proc:
        assert server.health(url)
        yield Srv(url, log, proc, port)
    time.sleep(1.0)
    assert not server.health(url), "the mlflow server outlived `nanoact server`"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("NANOACT_STORAGE", None)
    return env


def _launch(n: int, sweep_file: Path, storage: str, tracking: str, log: Path, cwd: Path, extra=()) -> list:
    procs = []
    for i in range(n):
        out = open(cwd / f"worker{i}.out", "w")
        cmd = [sys.executable, "-m", "nanoact.cli", "sweep", "--file", str(sweep_file), "--storage", storage,
               "--tracking-uri", tracking, "--train-log", str(log), *extra]
        procs.append((subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT), out))
    return procs


def _wait(procs, timeout: float = 600) -> list[str]:
    t0 = time.monotonic()
    outs = []
    for p, f in procs:
        try:
            p.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            f.close()
        outs.append(Path(f.name).read_text())
    return outs


class ConnectionPeak:
    """Polls pg_stat_activity: the most connections the ``nanoact`` role held at once."""

    def __init__(self, cluster):
        self.cluster, self.peak, self._stop = cluster, 0, threading.Event()

    def __enter__(self):
        def poll():
            while not self._stop.wait(0.25):
                n = self.cluster.admin(["SELECT count(*) FROM pg_stat_activity WHERE usename = 'nanoact'"])[0][0]
                self.peak = max(self.peak, n)

        self._t = threading.Thread(target=poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _cell_runs(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return exp, client.search_runs([exp.experiment_id], "tags.nanoact.role = 'cell'", max_results=1000)


def _report(name: str, **numbers) -> None:
    """Measured numbers, kept beside the test run (and printed with -s)."""
    line = json.dumps({"test": name, **numbers})
    print(line)
    out = os.environ.get("NANOACT_MEASURE_FILE")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


@pytest.mark.slow
def test_services_listen_on_loopback_only(pg, mlflow_server):
    def listeners(port: int) -> set[str]:
        found = set()
        for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
            if not os.path.exists(table):
                continue
            for row in Path(table).read_text().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                addr, p = local.split(":")
                if state == "0A" and int(p, 16) == port:  # LISTEN
                    found.add(addr)
        return found

    for port in (pg.port, mlflow_server.port):
        addrs = listeners(port)
        assert addrs == {"0100007F"}, (port, addrs)  # 127.0.0.1 only, nothing on 0.0.0.0 or ::


@pytest.mark.slow
def test_three_workers_share_the_grid_every_cell_exactly_once(pg, mlflow_server, tmp_path):
    pg.create_databases(["optuna_a"], owner="nanoact")
    storage = pg.url("nanoact", PW, "optuna_a")
    p = write_sweep(tmp_path, iters=30, grid=GRID_12, name="dist-a")
    spec = sweep.load_sweep(path=p)
    cells = sorted(c.key for c in spec.cells())
    log = tmp_path / "train.log"
    t0 = time.monotonic()
    with ConnectionPeak(pg) as conns:
        # all three at once, each doing the coordinator step itself (no --init)
        procs = _launch(3, p, storage, mlflow_server.url, log, tmp_path)
        outs = _wait(procs)
    wall = time.monotonic() - t0
    for (proc, _), out in zip(procs, outs):
        assert proc.returncode == 0 and "Traceback" not in out, out
    assert any("12 done of 12 cells" in out for out in outs)  # the last worker to finish saw the whole grid
    trained = [line.split("\t") for line in log.read_text().splitlines()]
    assert sorted(t[0] for t in trained) == cells  # the trainer's own count: each cell once, none missing
    per_worker = {w: sum(t[2] == w for t in trained) for w in {t[2] for t in trained}}
    assert len(per_worker) >= 2, per_worker  # the grid was shared
    client = MlflowClient(mlflow_server.url)
    exp, runs = _cell_runs(client, "dist-a")
    assert sorted(r.data.tags["nanoact.grid_key"] for r in runs) == cells  # one run per cell, no extras
    assert {r.info.status for r in runs} == {"FINISHED"}
    parents = client.search_runs([exp.experiment_id], "tags.nanoact.role = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # three coordinators, one parent
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    study = optuna.load_study(study_name="dist-a", storage=sweep.open_storage(storage))
    assert {s.state for s in sweep.cell_states(spec, study.trials)} == {"done"}
    dup = sum(bool(t.user_attrs.get(S.A_DUPLICATE)) for t in study.trials)
    assert dup == 0 and len(study.trials) == len(cells)  # three coordinators, each cell enqueued once
    _report("three_workers", wall_s=round(wall, 1), cells=len(cells), per_worker=sorted(per_worker.values()),
            duplicate_enqueues_skipped=dup, trials=len(study.trials), peak_db_connections=conns.peak)


@pytest.mark.slow
def test_sigkilled_worker_cell_is_retried_exactly_once(pg, mlflow_server, tmp_path):
    pg.create_databases(["optuna_b"], owner="nanoact")
    storage = pg.url("nanoact", PW, "optuna_b")
    p = write_sweep(tmp_path, iters=150, grid=GRID_12, name="dist-b")
    spec = sweep.load_sweep(path=p)
    cells = sorted(c.key for c in spec.cells())
    log = tmp_path / "train.log"
    client = MlflowClient(mlflow_server.url)
    t0 = time.monotonic()
    procs = _launch(3, p, storage, mlflow_server.url, log, tmp_path)
    by_pid = {proc.pid: proc for proc, _ in procs}
    try:
        while not (log.exists() and log.read_text().strip()):
            assert time.monotonic() - t0 < 300, "no worker started a cell"
            time.sleep(0.05)
        key, trial_no, worker = log.read_text().splitlines()[0].split("\t")
        victim = by_pid[int(worker.rsplit(":", 1)[1])]
        victim_run = None
        while victim_run is None:  # mid-cell: its MLflow run exists and is RUNNING
            assert time.monotonic() - t0 < 300, "the victim's run never appeared"
            exp = client.get_experiment_by_name("dist-b")
            if exp is not None:
                found = client.search_runs([exp.experiment_id], f"tags.optuna.trial_number = '{trial_no}'")
                if found and found[0].info.status == "RUNNING":
                    victim_run = found[0].info.run_id
            time.sleep(0.1)
        time.sleep(0.5)  # let the trial record its run id
        finished_before = {r.info.run_id: r.info.end_time for r in _cell_runs(client, "dist-b")[1]
                           if r.info.status == "FINISHED"}
        victim.send_signal(signal.SIGKILL)
        t_kill = time.time()
    finally:
        outs = _wait(procs)
    wall = time.monotonic() - t0
    assert victim.returncode == -signal.SIGKILL
    for (proc, _), out in zip(procs, outs):
        if proc is not victim:
            assert proc.returncode == 0 and "12 done of 12 cells" in out and "Traceback" not in out, out
    trained = [line.split("\t")[0] for line in log.read_text().splitlines()]
    assert sorted(set(trained)) == cells
    assert {k: trained.count(k) for k in cells} == {k: 2 if k == key else 1 for k in cells}  # retried once
    _, runs = _cell_runs(client, "dist-b")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["nanoact.grid_key"] for r in finished) == cells  # one FINISHED run per cell
    others = [r for r in runs if r.info.status != "FINISHED"]
    assert [(r.info.run_id, r.info.status) for r in others] == [(victim_run, "KILLED")]
    assert "worker died" in others[0].data.tags["nanoact.error"]
    for run_id, end in finished_before.items():  # no finished result lost or touched
        now = client.get_run(run_id)
        assert now.info.status == "FINISHED" and now.info.end_time == end
    study = optuna.load_study(study_name="dist-b", storage=sweep.open_storage(storage))
    dead = study.trials[int(trial_no)]
    assert dead.state == optuna.trial.TrialState.FAIL and dead.user_attrs[S.A_INTERRUPTED] is True
    assert "lease was released" in dead.user_attrs[S.A_ERROR]  # found by its lease, not by PID or host
    retries = [t for t in study.trials if t.user_attrs.get(S.A_RETRY_OF) == int(trial_no)]
    assert [t.state for t in retries] == [optuna.trial.TrialState.COMPLETE]
    assert {s.state for s in sweep.cell_states(spec, study.trials)} == {"done"}
    retry_run = next(r for r in finished if r.data.tags["nanoact.grid_key"] == key)
    _report("sigkill", wall_s=round(wall, 1), killed_cell=key,
            retry_started_after_kill_s=round(retry_run.info.start_time / 1000 - t_kill, 1),
            lease="advisory lock")


@pytest.mark.slow
def test_concurrent_live_workers_retry_a_dead_cell_exactly_once_on_postgres(pg, tmp_path):
    pg.create_databases(["optuna_race"], owner="nanoact")
    _race_to_recover(pg.url("nanoact", PW, "optuna_race"), tmp_path)


@pytest.mark.slow
def test_passwords_never_reach_mlflow_or_the_console(pg, mlflow_server, tmp_path):
    pg.create_databases(["optuna_c"], owner="nanoact")
    storage = pg.url("nanoact", PW, "optuna_c")
    tracking = mlflow_server.url.replace("http://", f"http://alice:{TPW}@")  # basic auth, ignored by the server
    secrets = [PW, TPW]
    p = write_sweep(tmp_path, iters=10, grid='"model.activation" = ["relu", "gelu"]\n"train.seed" = [1]',
                    name="dist-c")

    def nanoact(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nanoact.cli", *args], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=600)

    r = nanoact("sweep", "--file", str(p), "--storage", storage, "--tracking-uri", tracking)
    console = r.stdout + r.stderr
    assert r.returncode == 0, console
    assert "nanoact:***@127.0.0.1" in console  # shown, masked
    assert f"tracking {mlflow_server.url};" in console  # the tracking credentials went to MLflow's env vars
    r2 = nanoact("status", "--file", str(p), "--storage", storage)
    assert r2.returncode == 0 and "2/2 cells done" in r2.stdout
    console += r2.stdout + r2.stderr
    # everything MLflow holds for the experiment: params, tags, every artifact file
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("dist-c")
    runs = client.search_runs([exp.experiment_id], "", max_results=100)
    assert len(runs) == 3  # parent + 2 cells
    blobs: list[bytes] = [json.dumps(exp.tags).encode(), exp.artifact_location.encode()]
    downloaded = set()
    for run in runs:
        blobs.append(json.dumps([run.data.params, run.data.tags, run.info.artifact_uri]).encode())
        dst = tmp_path / "dl" / run.info.run_id
        dst.mkdir(parents=True)
        client.download_artifacts(run.info.run_id, "", str(dst))
        for f in dst.rglob("*"):
            if f.is_file():
                blobs.append(f.read_bytes())
                downloaded.add(f.relative_to(dst).as_posix())
    assert {"config.json", "checkpoint/model.pt", "predictions/step_10.npz"} <= downloaded
    # and Optuna's own records
    study = optuna.load_study(study_name="dist-c", storage=sweep.open_storage(storage))
    blobs.append(json.dumps([study.user_attrs] + [t.user_attrs for t in study.trials], default=str).encode())
    # the error paths: wrong password, database down, tracking server down
    wrong = "Wr0ng-pass-5Tz"
    secrets.append(wrong)
    down = server.free_port()
    bad = [
        (["--storage", storage.replace(PW, wrong)], "password authentication failed"),
        (["--storage", pg.url("nanoact", PW, "optuna_c").replace(f":{pg.port}/", f":{down}/")],
         "cannot open Optuna storage"),
        (["--storage", storage, "--tracking-uri", tracking.replace(f":{mlflow_server.port}", f":{down}")],
         "cannot reach the MLflow tracking server"),
    ]
    bad = [(["sweep", "--file", str(p), *args], expected) for args, expected in bad]
    bad.append((["server", "--backend-store-uri", pg.url("nanoact", wrong, "mlflow"), "--port",
                 str(server.free_port())], "password authentication failed"))
    for args, expected in bad:
        e = nanoact(*args)
        assert e.returncode == 2 and expected in e.stderr, e.stdout + e.stderr
        assert e.stderr.startswith("error: ") and e.stderr.count("\n") == 1, e.stderr
        console += e.stdout + e.stderr
    server_log = mlflow_server.log.read_text()
    for secret in secrets:
        for form in {secret, secret.replace("-", "%2D")}:
            assert form not in console, f"{form} in console output"
            assert form not in server_log, f"{form} in the server's output"
            assert not any(form.encode() in b for b in blobs), f"{form} stored in MLflow or Optuna"


@pytest.mark.slow
def test_postgres_lease_is_an_advisory_lock_that_survives_a_lost_connection(pg):
    """Two workers' leases on one cell exclude each other; when the holder's session is killed (a database
    restart, a cut network), its lease is free for others, releasing it is a no-op, and its next lease works."""
    pg.create_databases(["optuna_lease"], owner="nanoact")
    url = pg.url("nanoact", PW, "optuna_lease")
    a, b = open_leases(url, "s"), open_leases(url, "s")
    held = a.try_hold("cell")
    assert held is not None and b.try_hold("cell") is None and a.try_hold("cell") is None
    killed = pg.admin(["SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"])
    assert killed == [(True,)]
    time.sleep(0.5)
    taken = b.try_hold("cell")
    assert taken is not None  # the server dropped the dead session's lock
    held.release()  # no error, and it does not release b's lock
    assert a.try_hold("cell") is None
    other = a.try_hold("other-cell")  # a new session for a
    assert other is not None
    for lease in (taken, other):
        lease.release()
    a.close()
    b.close()


def test_a_single_worker_keeps_the_configured_threads(tmp_path, monkeypatch):
    """One worker in the calling process leaves train.threads as configured (0: torch's default, all cores);
    only a pool of workers splits the cores between them."""
    p = write_sweep(tmp_path, grid='"train.seed" = [1]', extra="")
    spec = sweep.load_sweep(path=p, overrides=["train.threads=0"])
    seen = []

    def fake_train(cfg, **kw):
        seen.append((cfg.train.threads, cfg.train.device))
        return type("R", (), {"metrics": {"final/val_loss": 1.0, "time/wall_s": 0.0}})()

    monkeypatch.setattr("nanoact.trainer.train", fake_train)
    assert sweep.run(spec, sweep.SweepOptions(devices=("cpu",))).trained == 1
    assert seen == [(0, "cpu")]
