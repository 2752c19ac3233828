"""The Optuna journal file of a sweep, kept readable: what a failed append leaves (a full disk, a killed writer)
is cut on open, and what cannot be mended is one error that names the file and the line.

Optuna's reader skips an unfinished last line (no newline), but the next append is glued onto it, and from then
on every read of the file fails. Each append takes the journal's lock (a symlink beside the file) and writes whole
lines, so under that lock a line without its newline, or a line that is no JSON record, is what a failed write
left.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from nanoact.errors import NanoactError

_log = logging.getLogger("nanoact")


class JournalCorrupt(NanoactError):
    """A line of the Optuna journal that is no JSON record, and that repair could not mend."""


class Journal(JournalFileBackend):
    """Optuna's journal file backend, with its failures worded: a corrupt line names the file and the line; a
    failed append (a full disk) names the journal, which Python's write error does not."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path

    def read_logs(self, log_number_from: int):
        try:
            for log in super().read_logs(log_number_from):
                if not isinstance(log, dict) or "op_code" not in log:
                    raise ValueError("not a journal record")
                yield log
        except ValueError:  # json.JSONDecodeError, or Optuna's "Invalid log format." (a torn line)
            raise _corrupt(self.path, _first_bad_line(self.path)) from None

    def append_logs(self, logs) -> None:
        try:
            super().append_logs(logs)
        except OSError as e:
            if e.filename is None:
                raise OSError(e.errno, e.strerror, str(self.path)) from e
            raise


def _corrupt(path: Path, line: int | None) -> JournalCorrupt:
    where = f"line {line}" if line is not None else "a line"
    return JournalCorrupt(f"the Optuna journal {path} is corrupt at {where} (not a JSON record, nor an unfinished "
                          "record with a whole one after it); move the file aside or delete that line, then run the "
                          "same command again")


def _first_bad_line(path: Path) -> int | None:
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for i, line in enumerate(lines[:-1], 1):  # the last piece is what follows the last newline
        if not _is_record(line):
            return i
    return len(lines) if lines[-1] else None


def _is_record(line: bytes) -> bool:
    try:
        log = json.loads(line)
    except ValueError:
        return False
    return isinstance(log, dict) and "op_code" in log


def _unglued(line: bytes) -> bytes | None:
    """A whole record that an append glued onto the unfinished record before it, or None. Every record starts
    with ``{"op_code":`` (inside a JSON string that text would be escaped), so the first such start after the
    line's own that parses to its end is the glued record."""
    start = line.find(b'{"op_code":', 1)
    while start > 0:
        if _is_record(line[start:]):
            return line[start:]
        start = line.find(b'{"op_code":', start + 1)
    return None


def _last_line_whole(path: Path) -> bool:
    """The journal ends with a newline and its last line is a record (Optuna's reader skips a last line that is
    not, silently)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return True
        pos, tail = end, b""
        while pos > 0 and tail.count(b"\n") < 2:  # the last line, read backwards in blocks
            step = min(pos, 1 << 16)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
    if not tail.endswith(b"\n"):
        return False
    return _is_record(tail[:-1].rsplit(b"\n", 1)[-1])


def repair_journal(path: Path, force: bool = False) -> str | None:
    """Cut what failed appends left in an Optuna journal (a full disk, a killed writer), under the journal's own
    lock: an unfinished last line (no newline), the unfinished start of a line that a later append was glued
    onto, and empty lines. Such a write had failed in its writer, so the record keeps every write that succeeded.

    Only the last line is read unless it is torn or ``force`` is given (a read failed further up). Logs one line
    saying what was cut and returns it; None when nothing was. A line that is no record and cannot be mended
    raises ``JournalCorrupt``, naming the file and the line (the file is left as it is)."""
    if not force and _last_line_whole(path):
        return None  # the usual case
    lock = JournalFileSymlinkLock(str(path))  # the lock Optuna's appends take
    lock.acquire()
    try:
        with open(path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        tail = lines.pop()  # what follows the last newline: an unfinished line, or nothing
        cut, kept = [], []
        for i, line in enumerate(lines, 1):
            if _is_record(line):
                kept.append(line)
                continue
            mended = _unglued(line) if line else b""
            if mended is None:
                raise _corrupt(path, i) from None
            cut.append(f"{len(line) - len(mended)} bytes at the start of line {i}" if mended else f"empty line {i}")
            kept += [mended] if mended else []
        if tail:
            cut.append(f"{len(tail)} bytes of an unfinished last line {len(lines) + 1}")
        if not cut:
            return None
        _rewrite(path, data, tail, kept, only_tail=len(cut) == 1 and bool(tail))
    finally:
        lock.release()
    notice = (f"repaired the Optuna journal {path}: cut {'; '.join(cut)} (what a write that failed left, e.g. on a "
              "full disk; the record keeps every write that succeeded)")
    _log.warning(notice)
    return notice


def _rewrite(path: Path, data: bytes, tail: bytes, kept: list[bytes], only_tail: bool) -> None:
    if only_tail:  # cut in place
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(tail))
            os.fsync(f.fileno())
        return
    tmp = path.with_name(f"{path.name}.repair-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(b"".join(line + b"\n" for line in kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
