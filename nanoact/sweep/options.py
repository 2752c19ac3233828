"""How a sweep runs (``SweepOptions``, validated when made) and what each worker gets (``WorkerContext``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from nanoact.errors import ConfigError
from nanoact.events import EventFn  # noqa: F401 (where the sweep modules import it from)
from nanoact.sweep.spec import SweepSpec


@dataclass(frozen=True)
class SweepOptions:
    """Args:
        storage_url: Optuna storage (default: a journal file under ``mlruns/``), a path, or a database URL
            (``nanoact.sweep.storage``).
        tracking_uri: MLflow store (default: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlruns/mlflow.db``).
        workers: processes on this machine sharing the study; CPU threads are split between them.
        retry_failed: also rerun cells whose last attempt FAILED.
        dry_run: only say what would run; create and change nothing.
        init_only: only the coordinator step (study, parent run, enqueue); train nothing.
        devices: one torch device per worker, e.g. ``("cuda:0", "cuda:1")``.
        plugins: modules every worker imports first (custom activations or models).
        train_log: append one line per cell a worker starts training (an audit of what ran).
        system_metrics: record CPU/memory/GPU use in each cell's run (MLflow's System metrics; needs psutil).
        oversubscribe: allow more ``workers`` than this machine has CPU cores (refused otherwise: each worker is a
            torch process of its own, and on PostgreSQL holds up to 6 connections).
    """

    storage_url: str | None = None
    tracking_uri: str | None = None
    workers: int = 1
    retry_failed: bool = False
    dry_run: bool = False
    init_only: bool = False
    devices: tuple[str, ...] | None = None
    plugins: tuple[str, ...] = ()
    train_log: str | None = None
    system_metrics: bool = False
    oversubscribe: bool = False

    def __post_init__(self) -> None:
        import os

        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError("--workers must be >= 1")
        cores = os.cpu_count() or 1
        if self.devices is None and self.workers > cores and not self.oversubscribe:
            raise ConfigError(f"--workers {self.workers} is more than the {cores} CPU cores of this machine (each "
                              "worker is a torch process of its own; on PostgreSQL each holds up to 6 connections); "
                              f"use at most {cores}, or add --oversubscribe to start {self.workers} anyway")
        if self.devices is not None:
            object.__setattr__(self, "devices", tuple(check_devices(list(self.devices), self.workers)))
        object.__setattr__(self, "plugins", tuple(self.plugins))
        if self.system_metrics:
            from nanoact.tracking import check_system_metrics

            check_system_metrics()


def check_devices(devices: list[str], workers: int) -> list[str]:
    """One valid torch device string per worker (``cuda:0,cuda:1``, ``cpu``); checked without touching a GPU."""
    import torch

    devices = [d.strip() for d in devices]
    if len(devices) != workers:
        raise ConfigError(f"--devices lists {len(devices)} devices for {workers} workers; give one per worker")
    for d in devices:
        try:
            torch.device(d)
        except (RuntimeError, ValueError):
            raise ConfigError(f"--devices: {d!r} is not a device; write e.g. cuda:0,cuda:1 or cpu") from None
    return devices


@dataclass(frozen=True)
class WorkerContext:
    """Everything a worker needs, as plain data so it can cross a process boundary."""

    spec: SweepSpec
    storage_url: str | None
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int = 0
    device: str | None = None
    plugins: tuple[str, ...] = ()
    worker_name: str = "w0"
    train_log: str | None = None
    system_metrics: bool = False


def worker_contexts(ctx: WorkerContext, workers: int, devices: tuple[str, ...] | None,
                    cores: int) -> list[WorkerContext]:
    """What each local worker process gets: its name, its device (one per worker), its share of the cores."""
    threads = max(1, cores // workers)
    return [replace(ctx, worker_name=f"w{i}", threads=ctx.threads or threads,
                    device=devices[i] if devices else None) for i in range(workers)]
