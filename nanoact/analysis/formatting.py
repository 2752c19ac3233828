"""How the report writes numbers and tables: fixed and significant digits, p-values, percentages, markdown tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def fixed(x: float | None, d: int = 4) -> str:
    """``d`` decimals; n/a for None or NaN, ±∞ for infinities."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a" if x is None or math.isnan(x) else ("∞" if x > 0 else "−∞")
    return f"{x:.{d}f}"


def sig(x: float | None, d: int = 4) -> str:
    """``d`` significant digits; n/a when missing or not finite."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{d}g}"


def p_text(p: float) -> str:
    """A p-value after "p": ``= 0.0123`` or ``< 0.0001``."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"= {p:.4f}"


def mean_sd(vals: Sequence[float], d: int = 4) -> str:
    """Mean ± s.d. (ddof 1) of the finite values; the mean alone for one value."""
    v = np.array([x for x in vals if math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    return f"{v.mean():.{d}f} ± {v.std(ddof=1):.{d}f}" if len(v) > 1 else f"{v.mean():.{d}f}"


def signed_pct(x: float) -> str:
    """A ratio as a signed percentage: ``+12.3%``."""
    return f"{100 * x:+.1f}%" if x is not None and math.isfinite(x) else "n/a"


def pct(x: float) -> str:
    """A ratio as a percentage: ``12.3%``."""
    return f"{100 * x:.1f}%" if x is not None and math.isfinite(x) else "n/a"


def plural(n: int, word: str) -> str:
    """``1 seed``, ``2 seeds``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def utc_time(ms_epoch: int) -> str:
    """Milliseconds since the epoch as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    import datetime as dt

    return dt.datetime.fromtimestamp(ms_epoch / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown pipe table; ``|`` in cells is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)
