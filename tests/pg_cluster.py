"""A throwaway PostgreSQL cluster on loopback, for the distributed tests (test infrastructure, not shipped).

On Debian, PostgreSQL refuses to run as root, so as root ``initdb``/``pg_ctl`` run as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

from nanoact.errors import NanoactError
from nanoact.server import free_port


def find_pg_bin(name: str) -> str | None:
    """``initdb``/``pg_ctl``/... on PATH, else in Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> float:
        try:
            return float(Path(path).parts[4])
        except (IndexError, ValueError):
            return 0.0

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version)
    return candidates[-1] if candidates else None


class LocalPostgres:
    """A PostgreSQL cluster in ``datadir``, listening on 127.0.0.1:``port`` only.

    Local (socket) connections are trusted for set-up; TCP connections need a password (scram-sha-256), so the
    URLs workers use carry real credentials. As root, the server runs as the ``postgres`` user.

    Args:
        datadir: a folder the cluster may own (created; chowned to ``postgres`` when running as root). It must not
            sit under a folder the ``postgres`` user cannot enter (pytest's tmp dirs are 0700: use /tmp/...).
        port: TCP port on 127.0.0.1 (0: a free one).
        max_connections: PostgreSQL's ``max_connections``.
    """

    def __init__(self, datadir: str | Path, port: int = 0, max_connections: int = 100):
        self.root = Path(datadir).resolve()
        self.port = port or free_port()
        self.max_connections = max_connections
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "postgres.log"
        initdb, pg_ctl = find_pg_bin("initdb"), find_pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise NanoactError("PostgreSQL server binaries (initdb, pg_ctl) not found; install them with "
                               "`apt-get install postgresql`")
        self.initdb, self.pg_ctl = initdb, pg_ctl

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return cmd
        runuser = shutil.which("runuser")
        if not runuser:
            raise NanoactError("running as root needs `runuser` to start PostgreSQL as the postgres user")
        return [runuser, "-u", "postgres", "--", *cmd]

    def _run(self, cmd: list[str], timeout: float = 120) -> None:
        r = subprocess.run(self._as_owner(cmd), capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            msg = " ".join((r.stderr or r.stdout).split())[-600:]
            raise NanoactError(f"{Path(cmd[0]).name} failed (exit {r.returncode}): {msg}")

    def start(self) -> "LocalPostgres":
        """initdb (first time) and start; returns self once the server accepts connections."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise NanoactError("running as root, but there is no `postgres` user to run PostgreSQL as "
                                   "(install the Debian package `postgresql`)") from None
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run([self.initdb, "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--auth-local=trust",
                       "--auth-host=scram-sha-256", "--no-instructions"])
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock} "
                f"-c max_connections={self.max_connections} -c fsync=off")
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start"])
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"])

    def _connect(self, dbname: str = "postgres"):
        import psycopg2

        conn = psycopg2.connect(host=str(self.sock), port=self.port, user="postgres", dbname=dbname)
        conn.autocommit = True
        return conn

    def admin(self, statements: Iterable, dbname: str = "postgres") -> list[tuple]:
        """Run statements as the superuser over the Unix socket (trusted); returns the last result's rows."""
        rows: list[tuple] = []
        conn = self._connect(dbname)
        try:
            with conn.cursor() as cur:
                for stmt in statements:
                    cur.execute(stmt)
                    rows = cur.fetchall() if cur.description else []
        finally:
            conn.close()
        return rows

    def create_user(self, user: str, password: str, databases: Iterable[str] = ()) -> None:
        """A login role with a password (scram-sha-256 over TCP), owning ``databases``."""
        from psycopg2 import sql

        self.admin([sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(password))])
        self.create_databases(databases, owner=user)

    def create_databases(self, databases: Iterable[str], owner: str) -> None:
        from psycopg2 import sql

        self.admin([sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner))
                    for db in databases])

    def url(self, user: str, password: str | None, dbname: str, driver: str = "postgresql+psycopg2") -> str:
        """A SQLAlchemy URL for ``user`` on ``dbname`` over TCP (the password percent-encoded)."""
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        return f"{driver}://{auth}@127.0.0.1:{self.port}/{dbname}"
