"""Absence of evidence, worded as such: equivalence tests (TOST) and the minimum detectable difference.

A test that finds nothing shows only that the data could not detect a difference. Two figures say how much that
means, for a difference of interest stated in advance (the *margin*: ``--pd-margin`` and ``--loss-margin`` of
``nanoact report``, documented in docs/REPORT.md), not from the observed difference (post-hoc power from an
observed effect is a function of the p-value and says nothing new: Hoenig & Heisey, Am. Stat. 2001):

* the minimum detectable difference (MDD) at the current number of seeds: the true difference that the
  two-sided t test, at level α/m (Holm's first step over m tests), finds with 80% power;
* the number of seeds that would detect a difference of exactly the margin with 80% power, assuming the SE
  shrinks like 1/√n (rough: it is an extrapolation of the observed SE).

``tost`` is Schuirmann's two one-sided tests (J. Pharmacokinet. Biopharm. 1987): equivalence within ±margin is
shown at level α when both one-sided t tests reject, i.e. when the 1 − 2α interval lies inside ±margin. Only then
does the report say "equally reproducible" or "no loss difference"; otherwise it says "not detected" with the
95% interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
PD_MARGIN = 0.10  # relative: 10% of the seed-to-seed PD of the pair
LOSS_MARGIN = 0.01  # nats per character


@dataclass
class Margins:
    """Differences of interest stated in advance (``nanoact report --pd-margin/--loss-margin``)."""

    pd_rel: float = PD_MARGIN  # relative difference of seed-to-seed PD, (W_a − W_b) / mean(W_a, W_b)
    loss: float = LOSS_MARGIN  # final val loss, nats per character

    def __post_init__(self) -> None:
        for name, v in (("pd margin", self.pd_rel), ("loss margin", self.loss)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v}")


def tost_p(est: float, se: float, df: float, margin: float) -> float:
    """p of the two one-sided t tests of H0: |true difference| >= margin (small p: equivalent within ±margin)."""
    if not (math.isfinite(est) and math.isfinite(se) and se > 0 and df >= 1):
        return math.nan
    lower = float(stats.t.sf((est + margin) / se, df))  # H0: diff <= −margin
    upper = float(stats.t.cdf((est - margin) / se, df))  # H0: diff >= +margin
    return max(lower, upper)


def tost_p_batch(est: np.ndarray, se: np.ndarray, df: float, margin: float) -> np.ndarray:
    """``tost_p`` for arrays (simulations)."""
    return np.maximum(stats.t.sf((est + margin) / se, df), stats.t.cdf((est - margin) / se, df))


def mdd(se: float, df: float, m: int = 1, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true difference the two-sided t test at α/m detects with ``power`` (normal-shift approximation)."""
    if not (math.isfinite(se) and df >= 1):
        return math.nan
    return float((stats.t.ppf(1 - alpha / (2 * max(m, 1)), df) + stats.t.ppf(power, df)) * se)


def seeds_for_margin(margin: float, se: float, n: int, m: int = 1, alpha: float = ALPHA, power: float = POWER,
                     df_offset: int = 1, limit: int = 1000) -> int | None:
    """Fewest seeds whose MDD (SE shrinking like 1/√n, df = seeds − df_offset) is at most ``margin``.

    None when the SE is unusable or more than ``limit`` seeds would be needed.
    """
    if not (math.isfinite(se) and se > 0 and n >= 1 and margin > 0):
        return None
    cand = np.arange(max(n, df_offset + 2), limit + 1)
    df = cand - df_offset
    need = (stats.t.ppf(1 - alpha / (2 * max(m, 1)), df) + stats.t.ppf(power, df)) * se * np.sqrt(n / cand)
    ok = np.flatnonzero(need <= margin)
    return int(cand[ok[0]]) if len(ok) else None
