"""nanoact.tracking.store: the one door to an MLflow store, and tracking_uri.sqlite_path, the one reading of a
sqlite URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoact.errors import NanoactError
from nanoact.tracking import Store, schema
from nanoact.tracking_uri import default_artifact_root, sqlite_path


def test_sqlite_path_reads_every_form_once():
    assert sqlite_path("sqlite:////abs/mlflow.db") == Path("/abs/mlflow.db")
    assert sqlite_path("sqlite:////abs/mlflow.db?timeout=30") == Path("/abs/mlflow.db")
    assert sqlite_path("sqlite:///:memory:") is None and sqlite_path("sqlite:///") is None
    assert sqlite_path("http://host:5000") is None and sqlite_path(None) is None
    assert default_artifact_root("sqlite:////abs/mlflow.db?timeout=30") == "file:///abs"


def test_reading_a_missing_store_is_one_line_and_creates_nothing(tmp_path):
    with pytest.raises(NanoactError, match=f"no MLflow store at {tmp_path}/mlruns/mlflow.db"):
        Store(f"sqlite:///{tmp_path}/mlruns/mlflow.db").reader()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a fresh sqlite store's schema takes seconds to create
def test_params_in_batches_and_a_reports_stale_metrics(tmp_path):
    """One store (creating one takes seconds): params past MLflow's batch limit are all logged, cut to its length
    limit; a report's metric that a later report no longer writes gets NaN as its newest value."""
    store = Store(f"sqlite:///{tmp_path}/mlflow.db")
    store.open()
    exp = store.ensure_experiment("batches")
    params = {f"p{i:03d}": i for i in range(2 * schema.MAX_PARAMS_PER_BATCH + 50)}
    params["long"] = "x" * (schema.MAX_PARAM_LEN + 10)
    run_id = store.create_run(exp, "r", {schema.ROLE: schema.ROLE_PARENT}, params)
    got = store.client.get_run(run_id).data.params
    assert len(got) == len(params) and got["p249"] == "249" and len(got["long"]) == schema.MAX_PARAM_LEN

    store.log_report(run_id, [], "report", metrics={"report/a/x": 1.0, "report/b/x": 2.0}, replace_prefix="report/")
    store.log_report(run_id, [], "report", metrics={"report/a/x": 3.0}, replace_prefix="report/", note="n")
    run = store.client.get_run(run_id)
    assert run.data.metrics["report/a/x"] == 3.0 and run.data.metrics["report/b/x"] != run.data.metrics["report/b/x"]
    assert run.data.tags[schema.NOTE] == "n"
