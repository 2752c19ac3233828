"""The one exception type for mistakes a user can make (bad input, missing files, diverging runs).

The CLI turns a ``NanoactError`` into a one-line message and exit code 2. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class NanoactError(Exception):
    """A user-facing error: the message is one line that says what is wrong and how to fix it."""


class ConfigError(NanoactError, ValueError):
    """A config key, value or sweep file is invalid."""


class DataError(NanoactError):
    """The corpus cannot be found, read or verified."""


class DivergenceError(NanoactError):
    """Training produced a NaN or infinite loss."""
