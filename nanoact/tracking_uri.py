"""Where runs and studies are stored by default: everything under ``./mlruns`` of the working directory.

Kept apart from ``nanoact.tracking`` so that resolving a URI never imports MLflow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_DIR = "mlruns"


def store_dir(cwd: str | Path | None = None) -> Path:
    """The absolute ``mlruns/`` folder of the working directory."""
    return (Path(cwd) if cwd else Path.cwd()).resolve() / DEFAULT_DIR


def resolve_tracking_uri(uri: str | None = None, cwd: str | Path | None = None) -> str:
    """Explicit URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<abs>/mlruns/mlflow.db``.

    A relative sqlite path is made absolute (MLflow resolves a relative sqlite path against whatever the cwd is
    later, so the same URI could name different stores).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{store_dir(cwd) / 'mlflow.db'}"
    m = re.match(r"^sqlite:///(.*)$", uri)
    if m and m.group(1) and not m.group(1).startswith("/") and m.group(1) != ":memory:":
        return f"sqlite:///{(Path(cwd) if cwd else Path.cwd()).resolve() / m.group(1)}"
    return uri


def sqlite_path(url: str | None) -> Path | None:
    """The database file of a ``sqlite:///PATH[?query]`` URL (an MLflow store or an Optuna storage), else None
    (another kind of URL, or an in-memory database). The one place such a URL is taken apart."""
    if not url or not url.startswith("sqlite:///"):
        return None
    db = url[len("sqlite:///"):].split("?", 1)[0]
    return Path(db) if db and db != ":memory:" else None


def default_artifact_root(tracking_uri: str, cwd: str | Path | None = None) -> str | None:
    """For a local sqlite store, artifacts live beside the DB (``mlruns/``); servers choose their own."""
    db = sqlite_path(tracking_uri)
    return db.parent.as_uri() if db is not None else None


def _mask_urls_in_text(url: str) -> str:
    """Hide passwords of ``scheme://user:password@host/...`` URLs found in a text whose URLs are not known.

    This reading stops at ``/`` and whitespace; ``display_url`` (for a known URL) and ``redact`` (for a text
    and the URLs it may echo) handle every character and are what callers use.
    """
    return re.sub(r"(://[^/:@\s]+):[^/\s]*@", r"\1:***@", url)


def url_passwords(url: str | None) -> set[str]:
    """The password(s) in ``scheme://user:password@host/...``, as written and percent-decoded.

    Two readings, both kept: the standard one (``urlsplit``) and one that allows a raw ``@`` or ``/`` in the
    password (everything between the first ``:`` of the user info and the last ``@``), plus the pieces between
    its ``@``, ``/`` and ``:``, which a driver reading the URL another way may print as a host or a path.
    """
    if not url or "://" not in url:
        return set()
    out: set[str] = set()
    try:
        pw = urlsplit(url).password
        if pw:
            out.add(pw)
    except ValueError:
        pass
    rest = url.split("://", 1)[1]
    userinfo, at, _ = rest.rpartition("@")
    user, colon, pw = userinfo.partition(":")
    if at and colon and pw and "/" not in user:
        out.add(pw)
    # a driver that splits such a URL at another '@' or '/' echoes the rest of the password as a host or path
    pieces = {piece for p in out for sep in "@/:" for piece in p.split(sep) if piece != p}
    out |= pieces
    return out | {unquote(p) for p in out}


def redact(text: str, *urls: str | None) -> str:
    """``text`` with the passwords of ``urls`` replaced by ``***`` and any other URL's credentials masked.

    Drivers and servers may echo a URL (or just the password) in an error message; this is the last filter
    before anything reaches a console, a tag or a report.
    """
    out = text
    for url in urls:
        for pw in sorted(url_passwords(url), key=len, reverse=True):
            if len(pw) >= 3:  # shorter "passwords" would mangle every message; URLs in it are masked below
                out = out.replace(pw, "***")
        if url:
            out = out.replace(url, display_url(url))
    return _mask_urls_in_text(out)


def display_url(url: str) -> str:
    """The one way a URL is printed, written to a report or a tag: ``scheme://user:***@host/...``.

    The password is everything between the first ``:`` of the user info and the last ``@``, so one holding
    ``/``, ``@``, ``:``, spaces or ``%`` is masked whole.
    """
    head, sep, rest = url.partition("://")
    if sep:
        userinfo, at, host = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if at and colon and "/" not in user:
            url = f"{head}://{user}:***@{host}"
    return _mask_urls_in_text(url)


def move_credentials_to_env(tracking_uri: str, env: dict | None = None) -> str:
    """``http://user:pw@host`` -> ``http://host``, with ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` set in ``env``
    (default ``os.environ``; values already there win). MLflow prints its host URL in run links and error
    messages, which end up on consoles and in ``nanoact.error`` tags: it must never see the password."""
    if not tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    parts = urlsplit(tracking_uri)
    if parts.username is None and parts.password is None:
        return tracking_uri
    env = os.environ if env is None else env
    if parts.username:
        env.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username))
    if parts.password:
        env.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host).geturl()


# ----------------------------------------------------------------------------------------------------------
# the MLflow tracking server
