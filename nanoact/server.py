"""Processes and ports: an MLflow tracking server (``nanoact server``) and the UI's (``nanoact ui``).

- ``start_server`` runs ``mlflow server`` backed by PostgreSQL (or a local sqlite DB) with a served artifact store,
  bound to 127.0.0.1 unless told otherwise. The backend URL goes to the child through its environment, never its
  command line (``ps`` shows every user a command line), and every line the server prints is redacted.
- ``check_port_free`` and ``port_holder`` say who holds a port before anything starts.

MLflow runs in a child process (``python -m mlflow server``) and is never imported here; probing a store (is it
reachable, does its database answer) is ``nanoact.tracking.store``'s job.

Library code: nothing here prints; output goes to the callbacks the caller passes.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nanoact.errors import NanoactError
from nanoact.tracking.store import health
from nanoact.tracking_uri import default_artifact_root, redact, store_dir

LOOPBACK = ("127.0.0.1", "localhost", "::1")
HEALTH_TIMEOUT_S = 120.0


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for tests and throwaway servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """One clear line if ``host:port`` is taken, before anything is started or printed as ready.

    A bind test with ``SO_REUSEADDR``, as the servers themselves bind: a port left in TIME_WAIT by a server that
    just stopped counts as free, one something listens on does not. Without this, the UI printed its URL and
    exited 0, and ``nanoact server`` announced "ready" because the other server answered ``/health``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise NanoactError(f"port {port} on {host} cannot be bound ({e.strerror}); choose another --port") \
                    from None
            holder = port_holder(port)
            if holder is not None:
                pid, cmd, group = holder
                raise NanoactError(f"port {port} on {host} is already in use by pid {pid} ({cmd}), process group "
                                   f"{group}; stop it (`kill -- -{group}`) or choose another --port") from None
            raise NanoactError(f"port {port} on {host} is already in use; stop whatever listens there or choose "
                               "another --port") from None


def port_holder(port: int) -> tuple[int, str, int] | None:
    """(pid, command line, process group) of the nanoact or mlflow process that listens on TCP ``port`` on this
    machine (for ``mlflow server``, a uvicorn worker in the server's group), or None: another program, another
    user's, or not Linux. Read from ``/proc``: the listening socket's inode, then a process holding it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    if not inodes:
        return None
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone, or not ours to read
            continue
        if "mlflow" in cmd or "nanoact" in cmd:
            try:
                group = os.getpgid(int(proc.name))
            except OSError:
                continue
            found.append((int(proc.name), cmd if len(cmd) <= 120 else cmd[:117] + "...", group))
    return min(found) if found else None


@contextmanager
def stop_on_hangup():
    """SIGTERM (``kill``) and SIGHUP (the terminal closed) raise KeyboardInterrupt, as Ctrl-C does, so that the
    caller stops the server's whole process group: it runs in a session of its own, which neither signal reaches."""

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@dataclass
class ServerSpec:
    """What ``mlflow server`` runs with. ``backend_store_uri`` stays out of the command line."""

    backend_store_uri: str
    artifacts_destination: str
    host: str = "127.0.0.1"
    port: int = 5000
    allowed_hosts: str | None = None
    workers: int | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", self.artifacts_destination,
               "--serve-artifacts", "--host", self.host, "--port", str(self.port)]
        if self.allowed_hosts:
            cmd += ["--allowed-hosts", self.allowed_hosts]
        if self.workers:
            cmd += ["--workers", str(self.workers)]
        return cmd

    def env(self) -> dict[str, str]:
        return {**os.environ, "MLFLOW_BACKEND_STORE_URI": self.backend_store_uri}


def server_spec(backend_store_uri: str | None = None, artifacts_destination: str | None = None,
                host: str = "127.0.0.1", port: int = 5000, allowed_hosts: str | None = None,
                workers: int | None = None, cwd: str | Path | None = None) -> ServerSpec:
    """Resolve defaults: sqlite ``mlruns/mlflow.db`` and artifacts under ``mlruns/artifacts`` of ``cwd``.

    Args:
        backend_store_uri: ``postgresql+psycopg2://user@host:port/db`` for several workers (the password is best
            kept in ``~/.pgpass`` or ``$PGPASSFILE``), or ``sqlite:///abs/path.db``.
        artifacts_destination: where the server stores artifacts (a folder, ``file://`` or ``s3://`` URI).
        host: bind address; loopback unless the user asks for more.
        port: TCP port.
        allowed_hosts: MLflow's ``--allowed-hosts`` (Host headers accepted; guards against DNS rebinding).
        workers: server worker processes (MLflow's default is 4; each holds its own DB connection pool).
    """
    if backend_store_uri and backend_store_uri.startswith("postgresql://"):
        raise NanoactError("write the backend store URL as postgresql+psycopg2://... (a bare postgresql:// means "
                           "the psycopg 3 driver with SQLAlchemy 2.1, which is not installed)")
    if not 0 < port < 65536:
        raise NanoactError(f"--port must be between 1 and 65535, not {port}")
    root = store_dir(cwd)
    if not backend_store_uri:
        root.mkdir(parents=True, exist_ok=True)
        backend_store_uri = f"sqlite:///{root / 'mlflow.db'}"
    if not artifacts_destination:
        artifacts_destination = str(root / "artifacts")
    if "://" not in artifacts_destination:
        Path(artifacts_destination).mkdir(parents=True, exist_ok=True)
        artifacts_destination = str(Path(artifacts_destination).resolve())
    return ServerSpec(backend_store_uri, artifacts_destination, host, port, allowed_hosts, workers)


@dataclass
class ServerProcess:
    """A running ``mlflow server``; its output is redacted, kept (last 200 lines) and passed to ``on_line``."""

    spec: ServerSpec
    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    _pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.spec.url

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        """Block until ``/health`` answers (about 10 s after start); a clear error if the server died or hangs."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                if self._pump:
                    self._pump.join(timeout=5)
                tail = " | ".join(line.strip() for line in self.lines[-4:] if line.strip())
                raise NanoactError(f"mlflow server exited with code {self.proc.returncode} before answering "
                                   f"/health: {tail[-600:] or 'no output'}")
            if health(self.url):
                return
            time.sleep(0.5)
        self.stop()
        raise NanoactError(f"mlflow server at {self.url} did not answer /health within {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the server's process group (its uvicorn workers too), SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        if self._pump:
            self._pump.join(timeout=5)
        return self.proc.returncode


def start_server(spec: ServerSpec, on_line: Callable[[str], None] | None = None) -> ServerProcess:
    """Start ``mlflow server`` in its own process group; returns at once (then call ``wait_healthy``)."""
    check_port_free(spec.host, spec.port)
    proc = subprocess.Popen(spec.command(), env=spec.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
    return _with_pump(ServerProcess(spec, proc), on_line)


def _with_pump(sp: ServerProcess, on_line: Callable[[str], None] | None) -> ServerProcess:
    """Read the server's output on a thread: redacted, the last 200 lines kept, each passed to ``on_line``."""
    proc, spec = sp.proc, sp.spec

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = redact(raw.rstrip("\n"), spec.backend_store_uri, spec.artifacts_destination)
            sp.lines.append(line)
            del sp.lines[:-200]
            if on_line:
                on_line(line)

    sp._pump = threading.Thread(target=pump, name="mlflow-server-output", daemon=True)
    sp._pump.start()
    return sp


def serve(spec: ServerSpec, on_line: Callable[[str], None] | None = None,
          on_ready: Callable[[str], None] | None = None) -> int | None:
    """Run the server until Ctrl-C, SIGTERM or SIGHUP (then stop it, group and all: ``kill`` or closing the
    terminal must not orphan it).

    Returns None after a requested stop, else the exit code of a server that stopped by itself.
    """
    with stop_on_hangup():
        sp = start_server(spec, on_line)
        try:
            sp.wait_healthy()
            if on_ready:
                on_ready(spec.url)
            return sp.proc.wait()
        except KeyboardInterrupt:
            return None
        finally:
            sp.stop()


def ui_process(tracking_uri: str, host: str, port: int,
               on_line: Callable[[str], None] | None = None) -> ServerProcess:
    """``mlflow server`` as a UI for one store: one worker process, no job runner (MLflow 3's background jobs
    serve GenAI features nanoact does not use), in its own process group, its output kept for errors and passed
    to ``on_line`` (else not shown). The store URI (maybe with a password) goes through the environment, not a
    command line that ``ps`` shows. Returns at once; ``wait_healthy`` and ``stop`` work as for ``start_server``."""
    root = default_artifact_root(tracking_uri)
    spec = ServerSpec(tracking_uri, root or "", host, port, workers=1)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    if root:
        cmd += ["--default-artifact-root", root]
    env = {**spec.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", start_new_session=True)
    return _with_pump(ServerProcess(spec, proc), on_line)
