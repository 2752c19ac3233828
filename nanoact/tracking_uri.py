"""Where runs and studies are stored by default: everything under ``./mlruns`` of the working directory.

Kept apart from ``tracking.py`` so that resolving a URI never imports MLflow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_DIR = "mlruns"


def store_dir(cwd: str | Path | None = None) -> Path:
    """The absolute ``mlruns/`` folder of the working directory."""
    return (Path(cwd) if cwd else Path.cwd()).resolve() / DEFAULT_DIR


def resolve_tracking_uri(uri: str | None = None, cwd: str | Path | None = None) -> str:
    """Explicit URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<abs>/mlruns/mlflow.db``.

    A relative sqlite path is made absolute (FACTS §6: MLflow resolves it against whatever the cwd is later).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{store_dir(cwd) / 'mlflow.db'}"
    m = re.match(r"^sqlite:///(.*)$", uri)
    if m and m.group(1) and not m.group(1).startswith("/") and m.group(1) != ":memory:":
        return f"sqlite:///{(Path(cwd) if cwd else Path.cwd()).resolve() / m.group(1)}"
    return uri


def default_artifact_root(tracking_uri: str, cwd: str | Path | None = None) -> str | None:
    """For a local sqlite store, artifacts live beside the DB (``mlruns/``); servers choose their own."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent.as_uri()
    return None


def mask_url(url: str) -> str:
    """Hide the password in ``scheme://user:password@host/...`` URLs (never log credentials)."""
    return re.sub(r"(://[^/:@]+):[^@/]*@", r"\1:***@", url)
