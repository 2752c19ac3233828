"""The services the distributed, fault and Slurm tests start (test infrastructure, not shipped): a throwaway
PostgreSQL cluster (``postgres``) and a ``nanoact server`` process (``nanoact_server``), each started, waited for
and stopped in one place."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import pytest
from pg_cluster import LocalPostgres, find_pg_bin

PW = "Pg-s3cr3t-7Qx"  # the password of role nanoact (the storage's); must never show up anywhere
SERVER_START_S = 240  # the longest `nanoact server` may take to say it is ready


def require_postgres() -> None:
    """Skip without PostgreSQL's server binaries; under ``CI=true`` that is a failure."""
    if find_pg_bin("initdb") and find_pg_bin("pg_ctl"):
        return
    msg = ("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; "
           "install them with `apt-get install postgresql`")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@contextlib.contextmanager
def postgres(databases: Iterable[str]) -> Iterator[LocalPostgres]:
    """PostgreSQL on 127.0.0.1:<free port>, data in a fresh /tmp folder; role ``nanoact`` (password ``PW``,
    scram-sha-256 over TCP) owns ``databases``. Stopped and deleted at the end."""
    require_postgres()
    root = tempfile.mkdtemp(prefix="nanoact-pg-")  # not under pytest's 0700 tmp: postgres must enter it
    cluster = LocalPostgres(root)
    try:
        cluster.start()
        cluster.create_user("nanoact", PW, list(databases))
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def nanoact_server(cmd: list[str], cwd: Path, env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``cmd`` (a ``nanoact server`` command line) in a session of its own, its output in ``log``; yields once it
    says it is ready (the test fails if it exits first or takes over ``SERVER_START_S``). At the end: SIGTERM,
    and SIGKILL to its process group if it is still there a minute later."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(env), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    t0 = time.monotonic()
    while "ready: start workers" not in log.read_text():
        if proc.poll() is not None or time.monotonic() - t0 > SERVER_START_S:
            proc.kill()
            pytest.fail(f"nanoact server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)  # must take its mlflow child down with it
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
