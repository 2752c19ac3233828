"""An Optuna RDB storage (PostgreSQL) that survives a database restart: a call whose connection is lost is
retried on a new connection, with backoff, for up to ``RECONNECT_S`` seconds (saying so once), and then stops
with one error that says what to do. Without this, every worker died in a long traceback ending in Optuna's
"exceeding max length" (its wording for any failed commit).

Retrying is safe because every write nanoact makes is conditional or idempotent: popping a trial is a WAITING ->
RUNNING update that fails if another worker took it; telling a finished trial again fails, and the worker then
treats the cell as handed on (``Worker._end``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Callable

from optuna.storages import BaseStorage, RDBStorage

from nanoact.errors import NanoactError, _chain

RECONNECT_S = 60.0  # how long a lost database may take to come back before the worker gives up
_log = logging.getLogger("nanoact")
_inside = threading.local()  # a retried call that calls another: only the outer one retries


class StorageUnreachable(NanoactError):
    """The Optuna database stayed unreachable for ``RECONNECT_S`` seconds."""


def connection_lost(exc: BaseException) -> bool:
    """``exc`` (or an error it wraps) is a lost or refused database connection, not a bad query."""
    try:
        import psycopg2
    except ImportError:  # no PostgreSQL driver: no PostgreSQL storage
        return False
    return any(isinstance(e, (psycopg2.OperationalError, psycopg2.InterfaceError)) for e in _chain(exc))


def reconnecting(call: Callable[[], Any], what: str) -> Any:
    """``call()``, retried with backoff while the database connection is lost, for up to ``RECONNECT_S``."""
    if getattr(_inside, "active", False):
        return call()
    _inside.active = True
    try:
        lost, delay = None, 0.5
        while True:
            try:
                value = call()
            except Exception as e:
                if not connection_lost(e):
                    raise
                first = next((str(x).strip().splitlines()[0] for x in _chain(e) if str(x).strip()), type(e).__name__)
                now = time.monotonic()
                if lost is None:
                    lost = now
                    _log.warning(f"lost the connection to {what} ({first}); reconnecting for up to {RECONNECT_S:.0f} s")
                if now - lost > RECONNECT_S:
                    raise StorageUnreachable(
                        f"{what} has been unreachable for over {RECONNECT_S:.0f} s ({first}); when it is back, run "
                        "the same command again (finished cells are kept, interrupted ones run again)") from None
                time.sleep(delay)
                delay = min(2 * delay, 5.0)
                continue
            if lost is not None:
                _log.warning(f"reconnected to {what} after {time.monotonic() - lost:.0f} s")
            return value
    finally:
        _inside.active = False


class ReconnectingRDBStorage(RDBStorage):
    """``RDBStorage`` whose every storage call goes through ``reconnecting``."""

    def __init__(self, url: str, what: str, **kwargs: Any):
        self._what = what
        super().__init__(url, **kwargs)


def _retried(name: str):
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return reconnecting(lambda: method(self, *args, **kwargs), self._what)

    return call


for _name in dir(BaseStorage):
    if not _name.startswith("_") and callable(getattr(RDBStorage, _name, None)):
        setattr(ReconnectingRDBStorage, _name, _retried(_name))
