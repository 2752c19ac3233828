"""Fixtures for the analysis tests: a fresh sqlite MLflow store per test, never ./mlruns.

Creating an MLflow sqlite DB runs its schema migrations (~4 s), so an empty DB is made once and cached in
pytest's cache folder (keyed by the MLflow version); each test gets its own copy under tmp_path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def _template_db(request, tmp_path_factory) -> Path:
    import mlflow
    from mlflow import MlflowClient

    try:
        folder = Path(request.config.cache.mkdir(f"nanoact-mlflow-{mlflow.__version__}"))
    except Exception:  # read-only checkout: fall back to a per-session template
        folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "empty.db"
    if not db.exists():
        tmp = folder / "building.db"
        tmp.unlink(missing_ok=True)
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()
        tmp.rename(db)
    return db


@pytest.fixture
def uri(tmp_path, _template_db) -> str:
    """A fresh, empty sqlite tracking store in tmp_path."""
    shutil.copy(_template_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """Artifact root for the test's experiments."""
    return tmp_path / "artifacts"
