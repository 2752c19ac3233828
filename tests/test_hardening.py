"""Hardening, as a user sees it: one `error:` line and exit code 2, nothing written outside `reports/` and the
store, no hang, no traceback, no password (issue 10). Report-side cases are in tests/analysis/test_hardening_report.py.

    python -m pytest tests/test_hardening.py -q
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import sqlalchemy.exc

from nanoact import cli
from nanoact.config import ConfigError, load_toml
from nanoact.errors import NanoactError, storage_error
from nanoact.server import check_port_free
from nanoact.tracking_uri import display_url, redact

PASSWORDS = ["pa/ss", "p@ss:w", "s3:cr/et@x", "pass word", "p%2Fw%40d", "a/", "/@: %z"]


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``nanoact ARGS`` through the real entry point (its top-level error handling included)."""
    capsys.readouterr()  # only what this command prints
    monkeypatch.setattr(sys, "argv", ["nanoact", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def files_under(path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# -- tracebacks instead of one line ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-" * 5000 + "1", "+".join(["1"] * 5000), "(" * 3000 + "1" + ")" * 3000])
def test_a_pathological_number_is_one_config_error_line(monkeypatch, capsys, value):
    code, out, err = run_main(monkeypatch, capsys, "params", "--set", f"model.n_layer={value}")
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert "model.n_layer" in line and len(line) < 300


@pytest.mark.parametrize("text", ["a = " + "[" * 3000 + "]" * 3000, "a = " + "{b = " * 3000 + "1" + "}" * 3000,
                                  "[" + ".".join(["t"] * 3000) + "]\nx = 1"])
def test_a_toml_file_nested_3000_deep_is_a_config_error(tmp_path, text):
    p = tmp_path / "deep.toml"
    p.write_text(text + "\n")
    try:
        load_toml(p)  # a dotted key 3,000 deep is legal TOML and may parse; nested brackets must not crash
    except ConfigError as e:
        assert str(p) in str(e) and "\n" not in str(e)


def test_load_toml_names_the_file_for_bad_syntax_and_bad_bytes(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_toml(bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="latin.toml: not UTF-8"):
        load_toml(latin)
    assert load_toml(_write(tmp_path / "ok.toml", 'name = "x"\n[grid]\n"train.seed" = [1, 2]\n')) == {
        "name": "x", "grid": {"train.seed": [1, 2]}}


def _write(p, text):
    p.write_text(text)
    return p


# -- a dead tracking server -------------------------------------------------------------------------------------

def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_train_with_a_dead_tracking_server_fails_at_once_with_one_line(monkeypatch, capsys, tmp_path):
    t0 = time.monotonic()
    code, out, err = run_main(monkeypatch, capsys, "train", "--tracking-uri", f"http://127.0.0.1:{_dead_port()}",
                              "--set", "train.max_iters=1")
    assert time.monotonic() - t0 < 30  # was 4 min 17 s of MLflow retries
    assert code == 2 and "cannot reach the MLflow tracking server" in one_error_line(err)
    assert "training" not in out and files_under(tmp_path) == set()


def test_a_dead_postgres_store_is_one_line_without_its_password(monkeypatch, capsys, tmp_path):
    url = f"postgresql+psycopg2://nanoact:pa/ss@w@127.0.0.1:{_dead_port()}/mlflow"
    code, out, err = run_main(monkeypatch, capsys, "train", "--tracking-uri", url, "--set", "train.max_iters=1")
    line = one_error_line(err)
    assert code == 2 and "cannot connect to the backend store" in line
    assert "pa/ss" not in line and "ss@w" not in line and "nanoact:***@127.0.0.1" in line


# -- read-only or full disk and database ----------------------------------------------------------------------

def _full_sqlite_error(tmp_path) -> sqlite3.OperationalError:
    """A real SQLITE_FULL: the database may not grow past a few pages."""
    con = sqlite3.connect(tmp_path / "small.db")
    con.execute("CREATE TABLE t (x BLOB)")
    con.commit()
    con.execute("PRAGMA max_page_count = 3")
    try:
        for _ in range(100):
            con.execute("INSERT INTO t VALUES (?)", (b"x" * 4096,))
    except sqlite3.OperationalError as e:
        return e
    finally:
        con.close()
    raise AssertionError("sqlite did not fill up")


def test_storage_error_recognises_real_full_and_read_only_failures(tmp_path):
    with pytest.raises(OSError) as full_disk:
        with open("/dev/full", "w") as f:
            f.write("x" * 100_000)
            f.flush()
    e = storage_error(full_disk.value)
    assert isinstance(e, NanoactError) and "full disk" in str(e)

    sq = _full_sqlite_error(tmp_path)
    wrapped = sqlalchemy.exc.OperationalError("INSERT INTO metrics ...", {}, sq)  # how MLflow's store raises it
    try:
        try:
            raise wrapped
        except Exception as inner:
            raise RuntimeError("mlflow: failed to log batch") from inner
    except RuntimeError as outer:
        e = storage_error(outer, "sqlite:////x/mlflow.db")
    assert "sqlite:////x/mlflow.db is full" in str(e) and "\n" not in str(e)

    ro = tmp_path / "ro.db"
    sqlite3.connect(ro).execute("CREATE TABLE t (x)").connection.commit()
    con = sqlite3.connect(f"file:{ro}?mode=ro", uri=True)  # read-only for root too, unlike chmod
    with pytest.raises(sqlite3.OperationalError) as read_only:
        con.execute("INSERT INTO t VALUES (1)")
    con.close()
    assert "is read-only" in str(storage_error(read_only.value, "the store"))
    assert storage_error(ValueError("something else")) is None


@contextlib.contextmanager
def immutable(path):
    """Really read-only, for root too (chmod does not stop root): the ext4 immutable attribute."""
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs ext4 and CAP_LINUX_IMMUTABLE)")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_train_into_a_read_only_store_is_one_line(monkeypatch, capsys, tmp_path):
    db = tmp_path / "mlflow.db"
    subprocess.run([sys.executable, "-c", "import sys; from mlflow import MlflowClient; "
                    "MlflowClient(sys.argv[1]).search_experiments()", f"sqlite:///{db}"],
                   check=True, capture_output=True)  # a real, migrated store, not held open by this process
    before = db.read_bytes()
    with immutable(db):
        code, out, err = run_main(monkeypatch, capsys, "train", "--tracking-uri", f"sqlite:///{db}",
                                  "--set", "train.max_iters=1")
    line = one_error_line(err)
    assert code == 2 and f"sqlite:///{db} " in line and "read-only" in line, line
    assert "training" not in out and db.read_bytes() == before


# -- a taken port ----------------------------------------------------------------------------------------------

@pytest.fixture
def taken_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("cmd", ["ui", "server"])
def test_ui_and_server_refuse_a_taken_port_before_starting_anything(monkeypatch, capsys, taken_port, cmd):
    code, out, err = run_main(monkeypatch, capsys, cmd, "--port", str(taken_port))
    assert code == 2 and f"port {taken_port} on 127.0.0.1 is already in use" in one_error_line(err)
    assert out == ""  # no URL, no "ready"


def test_a_free_port_passes(taken_port):
    check_port_free("127.0.0.1", _dead_port())
    with pytest.raises(NanoactError, match="already in use"):
        check_port_free("127.0.0.1", taken_port)


# -- one way to mask a password ------------------------------------------------------------------------------

@pytest.mark.parametrize("pw", PASSWORDS)
def test_display_url_masks_any_password(pw):
    for url in (f"postgresql+psycopg2://u:{pw}@db.example:5432/mlflow", f"http://u:{pw}@h:5000",
                f"mysql://u:{pw}@h/db?charset=utf8"):
        shown = display_url(url)
        assert pw not in shown and "u:***@" in shown, shown
        assert redact(f"failed: {url} said no", url).count(pw) == 0



def test_a_run_is_ended_even_when_its_error_tag_cannot_be_written(tmp_path, monkeypatch):
    """A full store may still take the status (an update in place) but not a new tag row."""
    from mlflow import MlflowClient

    from nanoact.tracking import MlflowTracker, ensure_experiment

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(store, ensure_experiment(store, "e"))
    tracker.start("r", {})
    full = sqlalchemy.exc.OperationalError("INSERT INTO tags ...", {}, _full_sqlite_error(tmp_path))
    monkeypatch.setattr(MlflowClient, "set_tag", lambda *a, **k: (_ for _ in ()).throw(full))
    with pytest.raises(sqlalchemy.exc.OperationalError):  # the reason is lost, and the CLI says why in one line
        tracker.finish("FAILED", "RuntimeError: boom")
    assert MlflowClient(store).get_run(tracker.run_id).info.status == "FAILED"


def test_train_on_a_store_that_fills_mid_run_says_which_run_is_left_running(monkeypatch, capsys, tmp_path):
    from mlflow import MlflowClient

    from nanoact.tracking import MlflowTracker

    full = sqlalchemy.exc.OperationalError("UPDATE runs ...", {}, _full_sqlite_error(tmp_path))
    start, started = MlflowTracker.start, []

    def start_then_fill(self, run_name, tags):
        start(self, run_name, tags)
        started.append(self.run_id)

    def write(orig):
        return lambda self, *a, **k: (_ for _ in ()).throw(full) if started else orig(self, *a, **k)

    monkeypatch.setattr(MlflowTracker, "start", start_then_fill)
    for name in ("log_batch", "set_tag", "set_terminated", "log_artifact", "log_text", "log_inputs"):
        monkeypatch.setattr(MlflowClient, name, write(getattr(MlflowClient, name)))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, err = run_main(monkeypatch, capsys, "train", "--tracking-uri", store, "--set", "train.max_iters=1")
    line = one_error_line(err)
    assert code == 2 and f"{store} is full" in line and f"run {started[0]} could not be ended" in line, line
