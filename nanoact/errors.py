"""The one exception type for mistakes a user can make (bad input, missing files, diverging runs).

The CLI turns a ``NanoactError`` into a one-line message and exit code 2. Anything else is a bug and keeps its
traceback, except a read-only or full disk or database, which ``storage_error`` recognises and words in one line.
"""

from __future__ import annotations

import errno


class NanoactError(Exception):
    """A user-facing error: the message is one line that says what is wrong and how to fix it."""


class GridVariesError(NanoactError):
    """An experiment's runs vary grid axes besides activation and seed (``axes``: axis -> its values), so one
    activation x seed analysis cannot hold them: the report analyses each level and the factorial design instead."""

    def __init__(self, message: str, axes: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.axes = axes


def did_you_mean(name: object, choices) -> str:
    """`` (did you mean 'max_iters'?)`` for a near miss among ``choices`` (difflib), else ''."""
    import difflib

    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ConfigError(NanoactError, ValueError):
    """A config key, value or sweep file is invalid."""


class DataError(NanoactError):
    """The corpus cannot be found, read or verified."""


class DivergenceError(NanoactError):
    """Training produced a NaN or infinite loss."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, Slurm's ``scancel`` or ``--signal`` before its time limit), handled as Ctrl-C is: the
    cell being trained ends as interrupted and runs again later. Raised by ``nanoact.sweep.interrupt``."""


def interrupt_reason(e: BaseException) -> str:
    """How an interrupted run or trial says why (its ``nanoact.error``)."""
    return "interrupted (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C / SIGINT)"


# (errno, words) of OS failures that mean "this place cannot take the write"
_OS_FAILURES = {
    errno.EROFS: "is on a read-only file system",
    errno.ENOSPC: "is on a full disk (no space left on device)",
    errno.EDQUOT: "is on a disk whose quota is exceeded",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
}
# (message fragment, words) as sqlite and the drivers above it word them
_DB_FAILURES = (
    ("attempt to write a readonly database", "is read-only"),
    ("database or disk is full", "is full (the disk or the database)"),
    ("read-only file system", "is on a read-only file system"),
    ("no space left on device", "is on a full disk (no space left on device)"),
    ("disk quota exceeded", "is on a disk whose quota is exceeded"),
    ("unable to open database file", "cannot be opened (missing folder, or not readable/writable)"),
    ("disk i/o error", "cannot be read or written (disk I/O error: a read-only, full or failing disk?)"),
)


def _chain(exc: BaseException):
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]  # ``orig``: SQLAlchemy's DB-API error


def storage_error(exc: BaseException, what: str = "") -> NanoactError | None:
    """A one-line ``NanoactError`` if ``exc`` (or an error it wraps) means a read-only or full disk or database,
    else None.

    Args:
        exc: any exception; OSError (EROFS, ENOSPC, EDQUOT, EACCES, EPERM), sqlite's ``attempt to write a
            readonly database`` / ``database or disk is full``, and the SQLAlchemy or MLflow errors wrapping
            them are recognised, wherever they sit in the ``__cause__``/``__context__`` chain.
        what: the store or folder being written, for the message (e.g. a masked tracking URI); the file named
            by an OSError is used when given.
    """
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _OS_FAILURES:
            place = e.filename or what or "the output"
            return NanoactError(f"{place} {_OS_FAILURES[e.errno]}: {e.strerror}; free space or choose a "
                                "writable location, then run the same command again")
    for e in _chain(exc):
        text = " ".join(str(e).split()).lower()
        for frag, words in _DB_FAILURES:
            if frag in text:
                return NanoactError(f"{what or 'the store'} {words} ({frag}); free space or choose a writable "
                                    "store, then run the same command again")
    return None
