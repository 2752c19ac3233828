"""The Tracker seam between the trainer and a tracking backend.

The trainer calls a ``Tracker`` a handful of times per eval step, never per training step. ``NullTracker``
discards everything (tests, ``nanoact train`` without a store); ``MemoryTracker`` keeps it in memory;
``MlflowTracker`` writes one MLflow run in the schema of docs/TRACKING.md, with metrics batched and artifact
uploads on a background thread so they overlap with training.
"""

from __future__ import annotations

import io
import json
import platform
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

MAX_TAG_LEN = 5000
MAX_PARAM_LEN = 6000


class Tracker(Protocol):
    def start(self, run_name: str, tags: Mapping[str, str]) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_predictions(self, step: int, probs: np.ndarray, targets: np.ndarray) -> None: ...
    def log_dict(self, obj: Any, artifact_file: str) -> None: ...
    def log_checkpoint(self, payload: dict[str, Any]) -> None: ...
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


def git_commit() -> str:
    """The commit of the nanoact checkout, or 'unknown' for an installed copy."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
            text=True, timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance_tags(device: Any) -> dict[str, str]:
    import torch

    import nanoact

    dev = str(device)
    if getattr(device, "type", "") == "cuda":
        dev = f"{dev} ({torch.cuda.get_device_name(device)})"
    else:
        dev = f"{dev} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {
        "nanoact.version": nanoact.__version__,
        "nanoact.torch_version": torch.__version__,
        "nanoact.git_commit": git_commit(),
        "nanoact.device": dev,
        "nanoact.host": platform.node(),
    }


class MlflowTracker:
    """One MLflow run per training run, created with an explicit client (no global MLflow state).

    Args:
        tracking_uri: where the run goes.
        experiment_id: the MLflow experiment.
        tags: tags set at creation (grid key, study, parent run id, ...).
        on_start: called with the new run id as soon as the run exists (the sweep links trial and run).
    """

    def __init__(self, tracking_uri: str, experiment_id: str, tags: Mapping[str, str] | None = None,
                 on_start: Callable[[str], None] | None = None):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.base_tags = dict(tags or {})
        self.on_start = on_start
        self.run_id: str | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="nanoact-run-"))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nanoact-upload")
        self._pending: list[Future] = []

    # -- helpers -----------------------------------------------------------------------------------------
    def _submit(self, fn, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    # -- Tracker -----------------------------------------------------------------------------------------
    def start(self, run_name: str, tags: Mapping[str, str]) -> None:
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={**self.base_tags, **tags}
        )
        self.run_id = run.info.run_id
        if self.on_start:
            self.on_start(self.run_id)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:MAX_TAG_LEN]) for k, v in tags.items()])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self._submit(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_predictions(self, step: int, probs: np.ndarray, targets: np.ndarray) -> None:
        arrays = predictions_npz(step, probs, targets)

        def write_and_upload() -> None:
            path = self._tmp / f"step_{step}.npz"
            np.savez(path, **arrays)
            self.client.log_artifact(self.run_id, str(path), "predictions")
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
            d = self._tmp / "checkpoint"
            d.mkdir(exist_ok=True)
            (d / "model.pt").write_bytes(buf.getvalue())
            self.client.log_artifact(self.run_id, str(d / "model.pt"), "checkpoint")

        self._submit(upload)

    def finish(self, status: str, error: str | None = None) -> None:
        if self.run_id is None:
            return
        try:
            try:
                self._drain()
            except Exception as e:  # an upload failed: the run must not be reported FINISHED
                if status == "FINISHED":
                    status, error = "FAILED", f"artifact upload failed: {type(e).__name__}: {e}"
            if error:
                from nanoact.tracking_uri import redact

                error = redact(error, self.tracking_uri)  # a driver's message may echo the store URL
                self.client.set_tag(self.run_id, "nanoact.error", error[:MAX_TAG_LEN])
            self.client.set_terminated(self.run_id, status)
        finally:
            self._pool.shutdown(wait=True)
            shutil.rmtree(self._tmp, ignore_errors=True)
        if status == "FAILED" and error and error.startswith("artifact upload failed"):
            from nanoact.errors import NanoactError

            raise NanoactError(f"run {self.run_id}: {error}")


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Create the MLflow experiment (and, for sqlite, the DB) once; return its id."""
    from mlflow import MlflowClient

    from nanoact.paths import experiment_artifact_location
    from nanoact.server import check_tracking_server
    from nanoact.tracking_uri import default_artifact_root

    check_tracking_server(tracking_uri)  # one line within seconds, not minutes of MLflow retries
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri)
    root = default_artifact_root(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if root:  # an old experiment named '..' may point outside the store: refuse to write there
            experiment_artifact_location(root, name, exp.artifact_location)
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = experiment_artifact_location(root, name) if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another worker created it between our check and our create
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id

