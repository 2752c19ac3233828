"""Folder names derived from names a user or a tracking store chose (experiment names, run ids).

An MLflow experiment may be called ``..``, ``../../x`` or ``/etc``; used as a path component that name would
put reports, checkpoints and predictions anywhere. ``safe_dirname`` turns any name into one harmless folder
name, and ``inside`` checks that a path derived from it stays under the folder it belongs to.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from nanoact.errors import NanoactError

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX_LEN = 120


def safe_dirname(name: str) -> str:
    """One folder name for ``name``: the name itself when it is already plain (``cpu``, ``smoke+cpu``),
    else a readable slug plus 8 hex digits of the name's SHA-256, so two different names never share a folder.

    The result holds only ``[A-Za-z0-9._+-]``, does not start with a dot, and is never ``.`` or ``..``.
    """
    slug = _UNSAFE.sub("_", name)
    slug = re.sub(r"^\.+", lambda m: "_" * len(m.group()), slug)[:_MAX_LEN]
    if slug == name and slug:
        return slug
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{slug or '_'}-{digest}"


def inside(base: str | Path, path: str | Path, what: str) -> Path:
    """``path`` resolved, if it lies under ``base`` (resolved); else a one-line ``NanoactError`` naming ``what``."""
    root = Path(base).resolve()
    p = Path(path).resolve()
    if p != root and root not in p.parents:
        raise NanoactError(f"{what} ({str(path)!r}) would be outside {root}; refusing to write there")
    return p


REPORTS_DIR = "reports"


def report_dir(experiments: list[str], out_dir: str | Path | None = None) -> Path:
    """Where ``nanoact report`` writes: ``out_dir`` if the user chose one, else ``reports/<e1>+<e2>...`` with
    each experiment name made safe, checked to stay under ``reports/``. Nothing is created here."""
    if out_dir is not None:
        return Path(out_dir)
    path = Path(REPORTS_DIR) / "+".join(safe_dirname(e) for e in experiments)
    inside(REPORTS_DIR, path, "report folder")
    return path


def experiment_artifact_location(root_uri: str, name: str, existing: str | None = None) -> str:
    """The artifact folder URI of experiment ``name`` under a local store's ``root_uri`` (``file:///...``).

    New experiments get ``<root>/<safe_dirname(name)>``. An ``existing`` location (made before names were made
    safe, e.g. ``<root>/..``) is returned only if it still lies under the root; else a one-line error, since
    checkpoints and predictions would land outside the store.
    """
    root = Path(unquote(urlsplit(root_uri).path))
    if existing is None:
        return f"{root_uri.rstrip('/')}/{safe_dirname(name)}"
    parts = urlsplit(existing)
    if parts.scheme in ("", "file"):
        inside(root, Path(unquote(parts.path)), f"the artifact folder of experiment {name!r}")
    return existing
