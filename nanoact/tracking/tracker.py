"""The Tracker seam between the trainer and a tracking backend.

The trainer calls a ``Tracker`` a handful of times per eval step, never per training step. ``NullTracker``
discards everything (tests, ``nanoact train`` without a store); ``MemoryTracker`` keeps it in memory;
``MlflowTracker`` writes one MLflow run in the schema of docs/TRACKING.md, with metrics batched and artifact
uploads on a background thread so they overlap with training.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from nanoact.tracking import schema as S


class Tracker(Protocol):
    def start(self, run_name: str, tags: Mapping[str, str]) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_predictions(self, step: int, probs: np.ndarray, targets: np.ndarray) -> None: ...
    def log_dict(self, obj: Any, artifact_file: str) -> None: ...
    def log_checkpoint(self, payload: dict[str, Any]) -> None: ...
    def log_dataset(self, name: str, digest: str, source: str) -> None: ...
    def finish(self, status: str, error: str | None = None) -> None: ...


class NullTracker:
    """Accepts every call and keeps nothing."""

    def start(self, run_name, tags) -> None: ...
    def set_tags(self, tags) -> None: ...
    def log_params(self, params) -> None: ...
    def log_metrics(self, metrics, step) -> None: ...
    def log_predictions(self, step, probs, targets) -> None: ...
    def log_dict(self, obj, artifact_file) -> None: ...
    def log_checkpoint(self, payload) -> None: ...
    def log_dataset(self, name, digest, source) -> None: ...
    def finish(self, status, error=None) -> None: ...


class MemoryTracker:
    """Keeps everything in memory; what tests inspect."""

    def __init__(self) -> None:
        self.run_name = ""
        self.tags: dict[str, str] = {}
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.predictions: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.dicts: dict[str, Any] = {}
        self.checkpoint: dict[str, Any] | None = None
        self.datasets: list[tuple[str, str, str]] = []
        self.status: str | None = None
        self.error: str | None = None

    def start(self, run_name, tags) -> None:
        self.run_name = run_name
        self.tags.update(tags)

    def set_tags(self, tags) -> None:
        self.tags.update(tags)

    def log_params(self, params) -> None:
        self.params.update(params)

    def log_metrics(self, metrics, step) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_predictions(self, step, probs, targets) -> None:
        self.predictions[step] = (probs.copy(), targets.copy())

    def log_dict(self, obj, artifact_file) -> None:
        self.dicts[artifact_file] = obj

    def log_checkpoint(self, payload) -> None:
        self.checkpoint = payload

    def log_dataset(self, name, digest, source) -> None:
        self.datasets.append((name, digest, source))

    def finish(self, status, error=None) -> None:
        self.status, self.error = status, error


def predictions_npz(step: int, probs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of ``predictions/step_<N>.npz`` (docs/TRACKING.md)."""
    probs = np.asarray(probs, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.int64)
    return {
        "probs": probs.astype(np.float16),
        "targets": targets,
        "step": np.asarray(step, dtype=np.int64),
        "top1": probs.argmax(axis=1).astype(np.int64),
        "label_prob": probs[np.arange(len(targets)), targets].astype(np.float32),
    }


class MlflowTracker:
    """One MLflow run per training run, created with an explicit client (no global MLflow state).

    Args:
        tracking_uri: where the run goes.
        experiment_id: the MLflow experiment.
        tags: tags set at creation (grid key, study, parent run id, ...).
        on_start: called with the new run id as soon as the run exists (the sweep links trial and run).
        source: what made the run, for the UI's Source column (``nanoact sweep``, ``nanoact train``).
        system_metrics: also sample CPU/memory (and GPU) use into the run's System metrics (needs psutil).

    Metrics are buffered and written in batches from a background thread: at most every ``flush_s`` seconds,
    or when ``flush_n`` values are waiting, and at the end of the run.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, tags: Mapping[str, str] | None = None,
                 on_start: Callable[[str], None] | None = None, source: str = "nanoact",
                 system_metrics: bool = False, flush_s: float = 10.0, flush_n: int = 500):
        from nanoact.tracking.store import Store

        self.store = Store(tracking_uri)
        self.client = self.store.client
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.base_tags = {S.SOURCE_NAME: source, S.SOURCE_TYPE: "LOCAL", **dict(tags or {})}
        self.on_start = on_start
        self.run_id: str | None = None
        self._system = check_system_metrics() if system_metrics else None
        self._monitor = None
        self._tmp = Path(tempfile.mkdtemp(prefix="nanoact-run-"))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nanoact-upload")
        self._pending: list[Future] = []
        self._metrics: list[Any] = []
        self._flushed_at = time.monotonic()
        self.flush_s, self.flush_n = flush_s, flush_n

    # -- helpers -----------------------------------------------------------------------------------------
    def _submit(self, fn, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))

    def _drain(self) -> None:
        self._flush_metrics()
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def _flush_metrics(self) -> None:
        batch, self._metrics = self._metrics, []
        self._flushed_at = time.monotonic()
        for i in range(0, len(batch), S.MAX_METRICS_PER_BATCH):
            part = batch[i : i + S.MAX_METRICS_PER_BATCH]
            self._submit(lambda part=part: self.client.log_batch(self.run_id, metrics=part))

    # -- Tracker -----------------------------------------------------------------------------------------
    def start(self, run_name: str, tags: Mapping[str, str]) -> None:
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={**self.base_tags, **tags}
        )
        self.run_id = run.info.run_id
        if self.on_start:
            self.on_start(self.run_id)
        if self._system is not None:
            self._monitor = self._system(self.run_id, tracking_uri=self.tracking_uri)
            self._monitor.start()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[: S.MAX_TAG_LEN]) for k, v in tags.items()])

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.store.log_params(self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._metrics.extend(Metric(k, float(v), ts, step) for k, v in metrics.items())
        if len(self._metrics) >= self.flush_n or time.monotonic() - self._flushed_at >= self.flush_s:
            self._flush_metrics()

    def log_predictions(self, step: int, probs: np.ndarray, targets: np.ndarray) -> None:
        arrays = predictions_npz(step, probs, targets)

        def write_and_upload() -> None:
            path = self._tmp / f"step_{step}.npz"
            np.savez(path, **arrays)
            self.client.log_artifact(self.run_id, str(path), S.PREDICTIONS_DIR)
            path.unlink()

        self._submit(write_and_upload)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        text = json.dumps(obj, indent=2, sort_keys=True)
        self._submit(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_checkpoint(self, payload: dict[str, Any]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(payload, buf)

        def upload() -> None:
            d = self._tmp / S.CHECKPOINT_DIR
            d.mkdir(exist_ok=True)
            (d / "model.pt").write_bytes(buf.getvalue())
            self.client.log_artifact(self.run_id, str(d / "model.pt"), S.CHECKPOINT_DIR)

        self._submit(upload)

    def log_dataset(self, name: str, digest: str, source: str) -> None:
        """The corpus as the run's training dataset input (the UI's Datasets column)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=digest[:36], source_type="local" if "://" not in source else "http",
                     source=json.dumps({"uri": source, "sha256": digest}))
        tags = [InputTag(S.DATASET_CONTEXT, "training")]

        def log() -> None:
            for attempt in range(5):
                try:
                    return self.client.log_inputs(self.run_id, datasets=[DatasetInput(ds, tags)])
                except Exception as e:  # MLflow creates the experiment's dataset row get-or-create, not atomically:
                    if "unique" not in str(e).lower() or attempt == 4:  # two workers logging it at once (sqlite:
                        raise  # "UNIQUE constraint", PostgreSQL: "unique constraint"), one loses; the row exists
                        # now, so the next attempt links it
                    time.sleep(0.2 * (attempt + 1))

        self._submit(log)

    def finish(self, status: str, error: str | None = None) -> None:
        if self.run_id is None:
            return
        if self._monitor is not None:
            self._monitor.finish()
        try:
            try:
                self._drain()
            except Exception as e:  # an upload failed: the run must not be reported FINISHED
                if status == "FINISHED":
                    status, error = "FAILED", f"artifact upload failed: {type(e).__name__}: {e}"
            if error:
                from nanoact.tracking_uri import redact

                error = redact(error, self.tracking_uri)  # a driver's message may echo the store URL
            try:  # the status first: a new tag row may not fit on a full store where an update in place does
                self.client.set_terminated(self.run_id, status)
            except Exception as e:
                self._unended(e)
            if error:
                self.store.set_tag(self.run_id, S.ERROR, error)
        finally:
            self._pool.shutdown(wait=True)
            shutil.rmtree(self._tmp, ignore_errors=True)
        if status == "FAILED" and error and error.startswith("artifact upload failed"):
            from nanoact.errors import NanoactError

            raise NanoactError(f"run {self.run_id}: {error}")

    def _unended(self, e: Exception) -> None:
        """A full or read-only store that cannot even take the run's end: say that the run stays RUNNING."""
        from nanoact.errors import NanoactError, storage_error
        from nanoact.tracking_uri import display_url

        err = storage_error(e, display_url(self.tracking_uri))
        if err is None:
            raise e
        raise NanoactError(f"{err}; run {self.run_id} could not be ended, so it shows as RUNNING (a sweep ends "
                           "such a run when it runs the cell again)") from e


def check_system_metrics():
    """MLflow's system-metrics monitor class; a one-line error when its dependency (psutil) is missing."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as e:
        from nanoact.errors import NanoactError

        raise NanoactError(f"--system-metrics needs psutil ({e.name} is not installed): "
                           "pip install 'nanoact[system-metrics]'") from None
    return SystemMetricsMonitor
