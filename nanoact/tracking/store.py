"""``Store(uri)``: nanoact's one door to an MLflow tracking store.

Every MLflow client call of nanoact outside the trainer's ``MlflowTracker`` goes through here: the reachability
check, opening a store for writing, the experiment, the run operations of the sweep, the ``RunReader`` the report
reads with, and ``log_report``. What is written (names, tags) comes from ``nanoact.tracking.schema``; what the
report logs is decided by ``nanoact.analysis.report``. MLflow is imported when a client is first needed, never at
import time; an explicit client on an explicit URI, never MLflow's global state.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nanoact.errors import NanoactError
from nanoact.tracking import schema as S
from nanoact.tracking_uri import default_artifact_root, display_url, redact, sqlite_path


def health(url: str, timeout: float = 2.0) -> bool:
    """Whether an MLflow server answers ``/health`` at ``url`` (no credentials in ``url``)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def check_database(url: str, timeout: int = 10) -> None:
    """Connect once to a PostgreSQL backend: a wrong password or an unreachable server is one clear line now,
    not minutes of MLflow (or ``mlflow server``) retrying. Other URLs pass."""
    if not url.startswith("postgresql"):
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": timeout},
                                          poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise NanoactError(redact(f"cannot connect to the backend store {display_url(url)}: {type(e).__name__}: "
                                  f"{first}", url)) from None


class Store:
    """One MLflow tracking store, named by its URI. Cheap to make: the client is created on first use."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.uri)
        return self._client

    # -- reachability and opening ------------------------------------------------------------------------------
    def check_reachable(self, timeout: float = 5.0) -> None:
        """For an ``http(s)://`` store: one clear line if nothing answers ``/health`` (instead of MLflow's
        minutes of retries); for a PostgreSQL one, if the database cannot be reached. Other stores pass."""
        if self.uri.startswith("postgresql"):
            check_database(self.uri, timeout=max(1, int(timeout)))
            return
        if not self.uri.startswith(("http://", "https://")):
            return
        parts = urlsplit(self.uri)
        bare = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        if not health(bare, timeout):
            raise NanoactError(f"cannot reach the MLflow tracking server at {display_url(self.uri)} (no answer on "
                               f"/health within {timeout:.0f} s); start it with `nanoact server` or check "
                               "--tracking-uri")

    def exists(self) -> bool:
        """False for a local sqlite store whose file is not there (MLflow would create an empty one)."""
        db = sqlite_path(self.uri)
        return db is None or db.is_file()

    def require(self) -> None:
        """A local sqlite store must exist already (commands that only read never create one); a one-line error
        that names where it looked."""
        if not self.exists():
            raise NanoactError(f"no MLflow store at {sqlite_path(self.uri)} (nothing was created); run nanoact "
                               "from the folder where the sweep ran, or pass --tracking-uri")

    def open(self) -> None:
        """Make sure the store exists and its schema is current, one process at a time.

        MLflow creates (and migrates) a sqlite store's schema on the first client call; two processes doing that
        at once on a fresh folder fail ("duplicate column name"). A lock file beside the database serialises the
        first call. Other stores (servers) set themselves up.
        """
        db = sqlite_path(self.uri)
        if db is None:
            return
        import fcntl

        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.parent / f".{db.name}.init.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.client.search_experiments(max_results=1)

    def reader(self) -> RunReader:
        """What the report reads with. Reading never creates a store: a missing sqlite file is an error, and so is
        a server that does not answer within seconds."""
        self.require()
        self.check_reachable()
        return RunReader(self)

    # -- experiments -------------------------------------------------------------------------------------------
    def ensure_experiment(self, name: str, tags: Mapping[str, str] | None = None,
                          artifact_root: str | None = None) -> str:
        """Create the MLflow experiment (and, for sqlite, the DB) once; set ``tags`` on it; return its id.

        Every nanoact experiment is a "custom model development" experiment to MLflow 3 (``mlflow.experimentKind``),
        so its UI opens on the runs table rather than the GenAI overview. Its artifacts go under ``artifact_root``
        (default: beside a sqlite store's file; a server chooses its own).
        """
        from nanoact.paths import experiment_artifact_location

        self.check_reachable()  # one line within seconds, not minutes of MLflow retries
        if (db := sqlite_path(self.uri)) is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        tags = {S.EXPERIMENT_KIND: "custom_model_development", **dict(tags or {})}
        root = artifact_root or default_artifact_root(self.uri)
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = experiment_artifact_location(root, name) if root else None
            try:
                return self.client.create_experiment(name, artifact_location=location, tags=tags)
            except Exception:  # another worker created it between our check and our create
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if root:  # an old experiment named '..' may point outside the store: refuse to write there
            experiment_artifact_location(root, name, exp.artifact_location)
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        for k, v in tags.items():
            if exp.tags.get(k) != v:
                self.client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id

    # -- writing runs --------------------------------------------------------------------------------------------
    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str],
                   params: Mapping[str, Any] | None = None, start_time: int | None = None) -> str:
        """A new RUNNING run with ``tags`` and ``params``; returns its id."""
        run = self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags), start_time=start_time)
        self.log_params(run.info.run_id, params or {})
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Params, cut to MLflow's value limit, in batches of MLflow's batch limit."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[: S.MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), S.MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i : i + S.MAX_PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, metrics: Iterable[tuple[str, float, int, int]]) -> None:
        """(key, value, timestamp in ms, step) values, in batches of MLflow's batch limit."""
        from mlflow.entities import Metric

        items = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in metrics]
        for i in range(0, len(items), S.MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + S.MAX_METRICS_PER_BATCH])

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, str(value)[: S.MAX_TAG_LEN])

    def log_artifacts(self, run_id: str, local: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a folder's files, as artifacts of the run under ``artifact_path``."""
        if Path(local).is_dir():
            self.client.log_artifacts(run_id, str(local), artifact_path)
        else:
            self.client.log_artifact(run_id, str(local), artifact_path)

    def end_run(self, run_id: str, status: str, reason: str | None = None, only_if_running: bool = False,
                end_time: int | None = None) -> bool:
        """End a run as FINISHED, FAILED or KILLED; ``reason`` goes to the ``nanoact.error`` tag. Returns whether
        it was ended (False: ``only_if_running`` and it was not RUNNING)."""
        if only_if_running and self.client.get_run(run_id).info.status != "RUNNING":
            return False
        # the status before the reason: a new tag row may not fit on a full store where an update in place does
        self.client.set_terminated(run_id, status, end_time=end_time)
        if reason:
            self.set_tag(run_id, S.ERROR, reason)
        return True

    def reopen_run(self, run_id: str) -> None:
        """A resumed sweep's parent run is RUNNING again while cells train."""
        self.client.update_run(run_id, status="RUNNING")

    def delete_run(self, run_id: str, reason: str) -> None:
        """End a run as KILLED with ``reason`` and move it to MLflow's trash (``mlflow gc`` removes it for good)."""
        self.end_run(run_id, "KILLED", reason)
        self.client.delete_run(run_id)

    def log_report(self, run_id: str, files: Sequence[Path], artifact_path: str, *,
                   metrics: Mapping[str, float] | None = None, step: int = 0, replace_prefix: str | None = None,
                   note: str | None = None) -> None:
        """Log a report's files under ``artifact_path`` of ``run_id``, then its ``metrics`` (at ``step``) and
        ``note`` (the run's description), when given.

        MLflow cannot delete a metric: with ``replace_prefix``, a metric of the run under that prefix that
        ``metrics`` lacks gets NaN as its newest value, so no stale number reads as current."""
        for f in files:
            self.client.log_artifact(run_id, str(f), artifact_path)
        if metrics is not None:
            ts = int(time.time() * 1000)
            values = [(k, v, ts, step) for k, v in metrics.items()]
            if replace_prefix is not None:
                stale = [k for k in self.client.get_run(run_id).data.metrics
                         if k.startswith(replace_prefix) and k not in metrics]
                values += [(k, float("nan"), ts, step) for k in sorted(stale)]
            self.log_metrics(run_id, values)
        if note is not None:
            self.set_tag(run_id, S.NOTE, note)

    # -- finding runs ------------------------------------------------------------------------------------------
    def runs_tagged(self, experiment_id: str, tag: str, value: str) -> list[tuple[str, float]]:
        """(id, age in seconds) of the runs of an experiment whose tag ``tag`` is ``value`` (the values nanoact
        writes are hex), oldest first."""
        runs = self.client.search_runs([experiment_id], S.tag_filter(tag, value),
                                       order_by=["attributes.start_time ASC"], max_results=1000)
        return [(r.info.run_id, time.time() - r.info.start_time / 1000) for r in runs]

    def find_trial_run(self, study: str, trial_number: int):
        """The newest cell run of ``study`` made for Optuna trial ``trial_number`` (found by its tags), or None."""
        exps = [e.experiment_id for e in self.client.search_experiments()]
        if not exps:
            return None
        flt = " and ".join([S.tag_filter(S.STUDY, study), S.tag_filter(S.TRIAL_NUMBER, str(int(trial_number))),
                            S.tag_filter(S.ROLE, S.ROLE_CELL)])
        runs = self.client.search_runs(exps, flt, order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def studies(self, experiment_id: str) -> list[str]:
        """The studies of an experiment, newest parent run first."""
        runs = self.client.search_runs([experiment_id], S.tag_filter(S.ROLE, S.ROLE_PARENT),
                                       order_by=["attributes.start_time DESC"], max_results=1000)
        return list(dict.fromkeys(r.data.tags[S.STUDY] for r in runs if r.data.tags.get(S.STUDY)))

    def search_all(self, filter_string: str, max_results: int = 5000) -> list:
        """Runs of every experiment matching ``filter_string``."""
        ids = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(ids, filter_string, max_results=max_results) if ids else []


def final_metrics(run) -> dict[str, float]:
    """The summary metrics of a finished cell run (``final/*``, ``best/*``, ``time/*``)."""
    return {k: float(v) for k, v in run.data.metrics.items() if k.startswith(S.SUMMARY_PREFIXES)}


class RunReader:
    """Reading an experiment's runs, their curves and their prediction artifacts (``Store.reader``)."""

    def __init__(self, store: Store):
        self.store = store
        self._repos: dict[str, Any] = {}

    @property
    def client(self):
        return self.store.client

    def experiment(self, name: str):
        """The experiment named ``name``, or None."""
        return self.client.get_experiment_by_name(name)

    def experiment_names(self) -> list[str]:
        return sorted(e.name for e in self.client.search_experiments())

    def all_runs(self, experiment_id: str) -> list:
        """Every run of the experiment, page after page."""
        raw, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], "", max_results=1000, page_token=token)
            raw.extend(page)
            token = page.token
            if not token:
                return raw

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def metric_history(self, run_id: str, key: str) -> list:
        return self.client.get_metric_history(run_id, key)

    def list_artifacts(self, run_id: str, path: str) -> list[tuple[str, int | None]]:
        """(file name, size in bytes) of the run's artifacts in folder ``path``."""
        return [(Path(f.path).name, f.file_size) for f in self.client.list_artifacts(run_id, path)]

    def download(self, artifact_uri: str, rel: str, target: Path) -> Path:
        """Download the run artifact ``rel`` (of the run whose artifacts are at ``artifact_uri``) to ``target``.

        One file through the artifact repository's per-file download: MLflow's ``download_artifacts`` draws a
        progress bar on the terminal, which only an environment variable turns off. Written beside ``target``
        and renamed, so an interrupted download never leaves a truncated file where a cached one is looked for.
        """
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = self._repos.get(artifact_uri)
        if repo is None:
            repo = self._repos[artifact_uri] = get_artifact_repository(artifact_uri, tracking_uri=self.store.uri)
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            repo._download_file(remote_file_path=rel, local_path=str(part))  # every repository implements it
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        return target


# -- the uri-first functions the sweep and the CLI call (nanoact.tracking re-exports them) ---------------------------
def open_store(uri: str) -> None:
    Store(uri).open()


def require_store(uri: str) -> None:
    Store(uri).require()


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    Store(uri).check_reachable(timeout)


def ensure_experiment(uri: str, name: str, tags: Mapping[str, str] | None = None) -> str:
    return Store(uri).ensure_experiment(name, tags)


def create_parent_run(uri: str, experiment_id: str, run_name: str, tags: Mapping[str, str],
                      params: Mapping[str, Any]) -> str:
    """A sweep's parent run, with the base config as params."""
    return Store(uri).create_run(experiment_id, run_name, tags, params)


def runs_tagged(uri: str, experiment_id: str, tag: str, value: str) -> list[tuple[str, float]]:
    return Store(uri).runs_tagged(experiment_id, tag, value)


def delete_run(uri: str, run_id: str, reason: str) -> None:
    Store(uri).delete_run(run_id, reason)


def reopen_run(uri: str, run_id: str) -> None:
    Store(uri).reopen_run(run_id)


def end_run(uri: str, run_id: str, status: str, reason: str | None = None, only_if_running: bool = False) -> bool:
    return Store(uri).end_run(run_id, status, reason, only_if_running)


def find_trial_run(uri: str, study: str, trial_number: int):
    return Store(uri).find_trial_run(study, trial_number)
