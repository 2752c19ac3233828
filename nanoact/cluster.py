"""Where a sweep runs: Slurm's job and task ids, and whether its file stores are safe for several hosts.

- ``slurm_tags``: under Slurm, the job and array task ids that every cell run records as tags.
- ``check_stores``: the journal file (whose cell leases are ``flock`` locks), an SQLite Optuna storage and an
  SQLite MLflow store, each looked up in ``/proc/mounts`` (the mount with the longest matching prefix). A store
  whose locks other hosts cannot see, or an SQLite file on a network filesystem, is refused when several hosts
  may use it at once (a Slurm job array or a job on several nodes) and warned about otherwise.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, NamedTuple

from nanoact.errors import ConfigError
from nanoact.tracking_uri import sqlite_path

# environment variable -> run tag (docs/TRACKING.md)
SLURM_TAGS = {
    "SLURM_JOB_ID": "slurm.job_id",
    "SLURM_ARRAY_JOB_ID": "slurm.array_job_id",
    "SLURM_ARRAY_TASK_ID": "slurm.array_task_id",
    "SLURM_RESTART_COUNT": "slurm.restart_count",
    "SLURMD_NODENAME": "slurm.node",
}
ALLOW_UNSAFE = "NANOACT_ALLOW_UNSAFE_STORAGE"

# filesystems whose files several hosts can reach: SQLite must not be shared through them (its locking is not
# reliable on network filesystems, https://www.sqlite.org/useovernet.html)
NETWORK_FS = {"nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "ceph", "fuse.ceph", "gpfs", "beegfs", "glusterfs",
              "fuse.glusterfs", "fuse.sshfs", "sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs",
              "9p", "afs", "ocfs2", "gfs2"}


def slurm_tags(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Run tags for the Slurm job this process runs in (empty outside Slurm)."""
    env = os.environ if env is None else env
    return {tag: env[var] for var, tag in SLURM_TAGS.items() if env.get(var)}


def multi_host(env: Mapping[str, str] | None = None) -> str | None:
    """Why several hosts may use the same stores at once (a Slurm job array, a job on several nodes), or None."""
    env = os.environ if env is None else env
    nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or "1"
    if nodes.isdigit() and int(nodes) > 1:
        return f"Slurm job {env.get('SLURM_JOB_ID', '?')} runs on {nodes} nodes"
    if env.get("SLURM_ARRAY_TASK_ID"):
        return (f"Slurm array job {env.get('SLURM_ARRAY_JOB_ID', '?')}'s tasks can run on different nodes")
    return None


class Mount(NamedTuple):
    point: str
    fstype: str
    options: tuple[str, ...]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)  # \040 is a space


def parse_mounts(text: str) -> list[Mount]:
    """``/proc/mounts`` lines (device, mount point, type, options, ...) as mounts, in file order."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            mounts.append(Mount(_unescape(parts[1]), parts[2], tuple(parts[3].split(","))))
    return mounts


def mount_of(path: str | Path, mounts_text: str) -> Mount | None:
    """The mount that holds ``path`` (absolute): the longest matching mount point; of equal ones, the last
    (a later mount on the same point hides the earlier)."""
    p = str(path)
    best: Mount | None = None
    for m in parse_mounts(mounts_text):
        point = m.point.rstrip("/") or "/"
        if point == "/" or p == point or p.startswith(point + "/"):
            if best is None or len(point) >= len(best.point.rstrip("/") or "/"):
                best = m
    return best


def lock_problem(m: Mount) -> str | None:
    """Why ``flock`` locks on this mount are not seen by other hosts, or None when they are (or it is local)."""
    fs, opts = m.fstype, set(m.options)
    if fs in ("nfs", "nfs4"):
        if "nolock" in opts:
            return "mounted with nolock: locks stay on each host"
        if {"local_lock=all", "local_lock=flock"} & opts:
            return "mounted with local_lock: flock locks stay on each host"
        return None  # NFSv4 locks, or NLM (lockd) for v3: flock is sent to the server as a whole-file lock
    if fs == "lustre":
        return None if "flock" in opts else "mounted without the flock option: locks stay on each node"
    if fs in ("cifs", "smb3", "smbfs"):
        return "SMB/CIFS flock locks are not coherent between hosts"
    if fs in ("fuse.sshfs", "sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone"):
        return f"{fs} has no locks shared between hosts"
    return None


def _read_mounts(mounts: str | Path | None) -> str | None:
    path = Path(mounts) if mounts is not None else Path("/proc/mounts")
    try:
        return path.read_text()
    except OSError:  # no /proc (macOS): nothing to check against
        return None


def check_stores(storage: str | None, tracking_uri: str, *, env: Mapping[str, str] | None = None,
                 mounts: str | Path | None = None) -> list[str]:
    """Warnings about this sweep's file stores, one line each; raises ``ConfigError`` (one line) for a store that
    several hosts may use at once and that is unsafe for that. ``mounts`` is a ``/proc/mounts``-format file
    (default ``/proc/mounts``). ``$NANOACT_ALLOW_UNSAFE_STORAGE=1`` (all tasks on one node) makes the refusal
    a warning."""
    from nanoact.sweep.storage import StorageKind, storage_location

    env = os.environ if env is None else env
    text = _read_mounts(mounts)
    if text is None:
        return []
    hosts = multi_host(env)
    found: list[tuple[bool, str]] = []  # (refused, line)
    queue = storage_location(storage)
    if queue.kind is StorageKind.JOURNAL:
        found += _check(queue.path, "the Optuna journal", text, hosts, sqlite=False)
    elif queue.kind is StorageKind.SQLITE:
        found += _check(queue.path, "the Optuna SQLite storage", text, hosts, sqlite=True)
    if sqlite_path(tracking_uri) is not None:
        found += _check(sqlite_path(tracking_uri).resolve(), "the MLflow SQLite store", text, hosts, sqlite=True)
    refusals = [line for refused, line in found if refused]
    if refusals and env.get(ALLOW_UNSAFE) != "1":
        raise ConfigError(f"{refusals[0]} (all tasks on one node? set {ALLOW_UNSAFE}=1)")
    return [line for _, line in found]


SAFE_QUEUE = ("use --storage postgresql+psycopg2://... for the queue, or a journal on a filesystem with locks "
              "shared between hosts (see examples/slurm/README.md)")
SAFE_TRACKING = ("run `nanoact server` on one host (the login node) and pass --tracking-uri http://HOST:PORT "
                 "(see examples/slurm/README.md)")


def _check(path: Path, what: str, mounts_text: str, hosts: str | None, *, sqlite: bool) -> list[tuple[bool, str]]:
    m = mount_of(path, mounts_text)
    if m is None:
        return []
    where = f"{what} {path} is on {m.fstype} ({m.point})"
    lease_problem = lock_problem(m)
    if not (sqlite and m.fstype in NETWORK_FS) and lease_problem is None:
        return []
    if sqlite and m.fstype in NETWORK_FS:
        why = "SQLite on a network filesystem can be corrupted by writers on several hosts"
        fix = SAFE_TRACKING if what.startswith("the MLflow") else SAFE_QUEUE
    else:
        why = f"its cell leases are flock locks and {lease_problem}, so two hosts could train the same cell"
        fix = SAFE_QUEUE
    if hosts:
        return [(True, f"{where} and {hosts}: {why}; {fix}")]
    return [(False, f"{where}: {why}; if workers on other hosts share it, {fix}")]
