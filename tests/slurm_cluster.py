"""A throwaway one-node Slurm cluster, for the Slurm test (test infrastructure, not shipped).

munge, ``slurmctld`` and ``slurmd`` from Debian's packages (``apt-get install slurmctld slurmd slurm-client
munge``) run on this machine as root, with a minimal ``slurm.conf`` in a folder of their own: one node (this
machine's hostname, all its CPUs), no cgroups (``proctrack/linuxproc``, ``task/none``), no accounting, state
and logs in that folder, ports chosen free. Commands (``sbatch``, ``squeue``, ``scancel``, ...) find it through
``$SLURM_CONF``: use :meth:`LocalSlurm.env`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from nanoact.errors import NanoactError
from nanoact.server import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")


def missing() -> list[str]:
    """Slurm and munge programs not on PATH (or in /usr/sbin)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [p for p in DAEMONS + CLIENTS if shutil.which(p, path=path) is None]


def _which(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not found:
        raise NanoactError(f"{name} not found; install Debian's slurmctld slurmd slurm-client munge")
    return found


class LocalSlurm:
    """munged + slurmctld + slurmd on this machine, configured and kept in ``root``.

    Args:
        root: a folder for the config, state, spool, logs and munge socket (created).
        cpus: CPUs of the one node (default: ``os.cpu_count()``).
        kill_wait: seconds between SIGTERM and SIGKILL when Slurm ends a job (``KillWait``).
    """

    def __init__(self, root: str | Path, cpus: int | None = None, kill_wait: int = 30):
        if os.geteuid() != 0:
            raise NanoactError("the test Slurm cluster runs its daemons as root (SlurmUser=root)")
        self.root = Path(root).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.kill_wait = kill_wait
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: list[subprocess.Popen] = []

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment in which Slurm's commands talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
        return env

    def _write_config(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        ctld_port, d_port = free_port(), free_port()
        self.conf.write_text("\n".join([
            "ClusterName=nanoact-test",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            f"KillWait={self.kill_wait}",
            "MinJobAge=600",
            "SchedulerParameters=sched_interval=2",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _spawn(self, cmd: list[str], name: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=self.env(), start_new_session=True))
        log.close()

    def start(self, timeout: float = 60) -> "LocalSlurm":
        """Start munged, slurmctld and slurmd; returns self once the node is idle and takes jobs."""
        self._write_config()
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            raise NanoactError("/etc/munge/munge.key is missing (the munge package creates it)")
        self._spawn([_which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                     f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--seed-file={self.root / 'munge' / 'seed'}",
                     f"--log-file={self.root / 'log' / 'munged.log'}"], "munged")
        self._wait(lambda: self.munge_socket.exists(), 20, "munged")
        self._spawn([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._spawn([_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.host], "slurmd")
        self._wait(self._node_idle, timeout, "slurmd (node idle)")
        return self

    def _node_idle(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise NanoactError(f"{p.args[0]} exited with {p.returncode}: {self.logs()}")
        r = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%t"], capture_output=True, text=True,
                           env=self.env(), timeout=30)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def _wait(self, ok, timeout: float, what: str) -> None:
        t0 = time.monotonic()
        while not ok():
            if time.monotonic() - t0 > timeout:
                raise NanoactError(f"{what} did not come up in {timeout:.0f} s: {self.logs()}")
            time.sleep(0.3)

    def logs(self, tail: int = 1500) -> str:
        text = ""
        for f in sorted((self.root / "log").glob("*")):
            body = f.read_text(errors="replace")[-tail:]
            text += f"\n--- {f.name}\n{body}"
        return text

    def run(self, *args: str, check: bool = True, cwd: str | Path | None = None,
            env: dict[str, str] | None = None) -> str:
        """Run a Slurm command (``sbatch``, ``squeue``, ...) against this cluster; its stdout."""
        r = subprocess.run([_which(args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd,
                           env=self.env(env), timeout=60)
        if check and r.returncode != 0:
            raise NanoactError(f"{' '.join(args)} failed (exit {r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def jobs(self, job_id: str) -> list[str]:
        """States of the job's tasks still known to the queue (pending, running, completing)."""
        out = self.run("squeue", "-h", "-j", job_id, "-o", "%i %T", check=False)
        return [line for line in out.splitlines() if line.strip()]

    def wait_job(self, job_id: str, timeout: float) -> None:
        """Until no task of ``job_id`` is pending, running or completing."""
        self._wait(lambda: not self.jobs(job_id), timeout, f"job {job_id}")

    def job_info(self, job_id: str) -> str:
        """``scontrol show job`` (finished jobs stay MinJobAge = 600 s)."""
        return self.run("scontrol", "show", "job", job_id, check=False)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)  # state is thrown away with the folder
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
