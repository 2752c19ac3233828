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
    commit = git_commit()
    tags = {
        "nanoact.version": nanoact.__version__,
        "nanoact.torch_version": torch.__version__,
        "nanoact.git_commit": commit,
        "nanoact.device": dev,
        "nanoact.host": platform.node(),
        "mlflow.user": _user(),
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit  # the UI's "Source" column links the commit
    return tags


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


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
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.base_tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL", **dict(tags or {})}
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
        for i in range(0, len(batch), 1000):  # MLflow accepts at most 1000 metrics per batch
            part = batch[i : i + 1000]
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

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:MAX_TAG_LEN]) for k, v in tags.items()])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

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

    def log_dataset(self, name: str, digest: str, source: str) -> None:
        """The corpus as the run's training dataset input (the UI's Datasets column)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=digest[:36], source_type="local" if "://" not in source else "http",
                     source=json.dumps({"uri": source, "sha256": digest}))
        tags = [InputTag("mlflow.data.context", "training")]

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
                self.client.set_tag(self.run_id, "nanoact.error", error[:MAX_TAG_LEN])
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


def ensure_experiment(tracking_uri: str, name: str, tags: Mapping[str, str] | None = None) -> str:
    """Create the MLflow experiment (and, for sqlite, the DB) once; set ``tags`` on it; return its id.

    Every nanoact experiment is a "custom model development" experiment to MLflow 3 (``mlflow.experimentKind``),
    so its UI opens on the runs table rather than the GenAI overview.
    """
    from mlflow import MlflowClient

    from nanoact.paths import experiment_artifact_location
    from nanoact.server import check_tracking_server
    from nanoact.tracking_uri import default_artifact_root

    check_tracking_server(tracking_uri)  # one line within seconds, not minutes of MLflow retries
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri)
    tags = {"mlflow.experimentKind": "custom_model_development", **dict(tags or {})}
    root = default_artifact_root(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = experiment_artifact_location(root, name) if root else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=tags)
        except Exception:  # another worker created it between our check and our create
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if root:  # an old experiment named '..' may point outside the store: refuse to write there
        experiment_artifact_location(root, name, exp.artifact_location)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    for k, v in tags.items():
        if exp.tags.get(k) != v:
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


# ----------------------------------------------------------------------------------------------------------
# runs the sweep engine creates, ends and looks up (every MLflow call of nanoact.sweep goes through here)


def require_store(tracking_uri: str) -> None:
    """A local sqlite store must exist already (commands that only read never create one); a one-line error that
    names where it looked."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        from nanoact.errors import NanoactError

        raise NanoactError(f"no MLflow store at {tracking_uri[len('sqlite:///'):]} (nothing was created); run "
                           "nanoact from the folder where the sweep ran, or pass --tracking-uri")


def open_store(tracking_uri: str) -> None:
    """Make sure the store exists and its schema is current, one process at a time.

    MLflow creates (and migrates) a sqlite store's schema on the first client call; two processes doing that at
    once on a fresh folder fail ("duplicate column name"). A lock file beside the database serialises the first
    call. Other stores (servers) set themselves up.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    import fcntl

    from mlflow import MlflowClient

    db = Path(tracking_uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        MlflowClient(tracking_uri).search_experiments(max_results=1)


def create_parent_run(tracking_uri: str, experiment_id: str, run_name: str, tags: Mapping[str, str],
                      params: Mapping[str, Any]) -> str:
    """A sweep's parent run, with the base config as params (in batches of 100, MLflow's limit)."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def runs_tagged(tracking_uri: str, experiment_id: str, tag: str, value: str) -> list[tuple[str, float]]:
    """(id, age in seconds) of the runs of an experiment whose tag ``tag`` is ``value`` (the values nanoact
    writes are hex), oldest first."""
    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri).search_runs([experiment_id], f"tags.`{tag}` = '{value}'",
                                                  order_by=["attributes.start_time ASC"], max_results=1000)
    return [(r.info.run_id, time.time() - r.info.start_time / 1000) for r in runs]


def delete_run(tracking_uri: str, run_id: str, reason: str) -> None:
    """End a run as KILLED with ``reason`` and move it to MLflow's trash (``mlflow gc`` removes it for good)."""
    from mlflow import MlflowClient

    end_run(tracking_uri, run_id, "KILLED", reason)
    MlflowClient(tracking_uri).delete_run(run_id)


def reopen_run(tracking_uri: str, run_id: str) -> None:
    """A resumed sweep's parent run is RUNNING again while cells train."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).update_run(run_id, status="RUNNING")


def end_run(tracking_uri: str, run_id: str, status: str, reason: str | None = None,
            only_if_running: bool = False) -> bool:
    """End a run as FINISHED, FAILED or KILLED; ``reason`` goes to the ``nanoact.error`` tag. Returns whether
    it was ended (False: ``only_if_running`` and it was not RUNNING)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    if only_if_running and client.get_run(run_id).info.status != "RUNNING":
        return False
    client.set_terminated(run_id, status)  # the status before the reason (see MlflowTracker.finish)
    if reason:
        client.set_tag(run_id, "nanoact.error", reason[:MAX_TAG_LEN])
    return True


def find_trial_run(tracking_uri: str, study: str, trial_number: int):
    """The newest cell run of ``study`` made for Optuna trial ``trial_number`` (found by its tags), or None."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    if not exps:
        return None
    runs = client.search_runs(exps, f"tags.`nanoact.study` = '{study}' and tags.`optuna.trial_number` = "
                                    f"'{int(trial_number)}' and tags.`nanoact.role` = 'cell'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def final_metrics(run) -> dict[str, float]:
    """The summary metrics of a finished cell run (``final/*``, ``best/*``, ``time/*``)."""
    keep = ("final/", "best/", "time/", "tokens_per_s_mean")
    return {k: float(v) for k, v in run.data.metrics.items() if k.startswith(keep)}


VIEW_KEY = "nanoact-by-activation"  # the shared views of the runs table that `nanoact ui --experiment` opens


def view_key(study: str) -> str:
    """The share key of one study's view (study names are plain: letters, digits, '-', '_', '.')."""
    return f"{VIEW_KEY}.{study}"


def runs_table_view(grid: Mapping[str, list[Any]], study: str) -> tuple[str, str]:
    """(tag name, tag value) of a shared view of the runs table (the MLflow UI's "share view" state): the FINISHED
    cells of one study only, grouped by activation, with the grid's axes, final val loss/accuracy and wall time as
    columns, best first. The UI reads it from the experiment tag ``mlflow.sharedViewState.<key>``."""
    axes = ["activation" if k == "model.activation" else "seed" if k == "train.seed" else k for k in grid]
    columns = [f"params.`{a}`" for a in dict.fromkeys(["activation", "seed", *axes])]
    columns += ["metrics.`final/val_loss`", "metrics.`final/val_acc`", "metrics.`time/wall_s`"]
    state = {
        "searchFilter": view_filter(study),
        "orderByKey": "metrics.`final/val_loss`", "orderByAsc": True,
        "selectedColumns": columns,
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": "activation"}]},
        "groupsExpanded": {},
        **_chart_view(),
    }
    return f"mlflow.sharedViewState.{view_key(study)}", json.dumps(state)


def view_filter(study: str) -> str:
    """The runs-table filter of a study's view: its cells that trained to the end (no FAILED or KILLED attempt
    joins an activation's group)."""
    return (f"tags.`nanoact.study` = '{study}' and tags.`nanoact.role` = 'cell' and "
            "attributes.status = 'FINISHED'")


CURVES = ("val/loss", "train/loss_iter", "val/acc", "lr", "train/loss")
SUMMARIES = ("best", "final", "time")  # single-point metrics: their chart sections start collapsed


def _chart_view() -> dict[str, Any]:
    """The chart view opens on learning curves (line charts over steps), summaries collapsed below. Losses get a
    log y-axis: step 0 (about ln 65 = 4.2 nats) would otherwise squeeze the activations' curves together near the
    bottom of a linear axis that starts at 0."""
    def line(key: str) -> dict[str, Any]:
        return {"type": "LINE", "uuid": f"nanoact-{key}", "metricSectionId": "nanoact-curves", "isGenerated": True,
                "deleted": False, "metricKey": key, "selectedMetricKeys": [key], "displayName": key,
                "runsCountToCompare": 10, "lineSmoothness": 0, "xAxisScaleType": "linear",
                "scaleType": "log" if "loss" in key else "linear",
                "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
                "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True,
                "useGlobalLineSmoothing": True}

    def section(uuid: str, name: str, display: bool) -> dict[str, Any]:
        return {"uuid": uuid, "name": name, "display": display, "isReordered": False, "deleted": False,
                "isGenerated": True}

    sections = [section("nanoact-curves", "learning curves", True)]
    sections += [section(f"autogen-{name}", name, False) for name in SUMMARIES]
    return {"compareRunCharts": [line(k) for k in CURVES], "compareRunSections": sections,
            "isAccordionReordered": True}


def studies(tracking_uri: str, experiment_id: str) -> list[str]:
    """The studies of an experiment, newest parent run first."""
    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri).search_runs([experiment_id], "tags.`nanoact.role` = 'parent'",
                                                  order_by=["attributes.start_time DESC"], max_results=1000)
    return list(dict.fromkeys(r.data.tags["nanoact.study"] for r in runs if r.data.tags.get("nanoact.study")))


def runs_table_path(tracking_uri: str, experiment: str, study: str | None = None) -> tuple[str, str | None]:
    """(the UI path of an experiment's runs table, the study it shows): nanoact's shared view of ``study`` (default:
    the newest study) when the sweep stored one, else the plain table (study None)."""
    from mlflow import MlflowClient

    from nanoact.errors import NanoactError

    exp = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    if exp is None:
        raise NanoactError(f"no experiment {experiment!r} in this store yet; run `nanoact sweep --experiment "
                           f"{experiment}` (or `nanoact train`) first")
    known = studies(tracking_uri, exp.experiment_id)
    if study is not None and study not in known:
        raise NanoactError(f"experiment {experiment!r} has no study {study!r}; its studies: "
                           f"{', '.join(known) or 'none'}")
    chosen = study or next(iter(known), None)
    # workflowType: MLflow 3's UI opens in its GenAI mode (an empty trace overview) unless told otherwise
    path = f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    if chosen is not None and f"mlflow.sharedViewState.{view_key(chosen)}" in exp.tags:
        return f"{path}&viewStateShareKey={view_key(chosen)}", chosen
    return path, None
